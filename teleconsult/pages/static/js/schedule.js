// What the patient's page and the front desk share about appointments: the free slots
// listed by day, and the form that cancels an appointment with a reason.
import { api } from "./api.js";
import { t } from "./i18n.js";
import { el, formatDate, formatDateTime, formatTime, submitting, toast } from "./ui.js";

/** The slots grouped by day: per day a `heading` (h3, h4…) and a button per slot that
 * calls `pick(slot)`. */
export function slotDays(slots, pick, heading) {
  const byDay = new Map();
  for (const s of slots) {
    const key = formatDate(s.starts_at, { weekday: "long", day: "numeric", month: "long" });
    if (!byDay.has(key)) byDay.set(key, []);
    byDay.get(key).push(s);
  }
  return [...byDay].map(([day, items]) =>
    el(
      "div",
      { class: "day" },
      el(heading, {}, day),
      el(
        "ul",
        { class: "slots" },
        items.map((s) => el("li", {}, el("button", { type: "button", class: "slot", onclick: () => pick(s), "aria-label": t("patient.pick_slot", { when: formatDateTime(s.starts_at) }) }, formatTime(s.starts_at)))),
      ),
    ),
  );
}

/** Appends to `item` (once) a form asking why appointment `a` is cancelled; its input's
 * id is `${idPrefix}${a.id}`, prefilled with `reason` if given. Once cancelled:
 * `await cancelled()`, then the element `focusId` takes the focus. */
export function showCancel(item, a, { idPrefix, reason, cancelled, focusId }) {
  if (item.querySelector("form")) return;
  const form = el(
    "form",
    { class: "stack" },
    el("label", { for: `${idPrefix}${a.id}` }, t("patient.cancel_reason")),
    el("input", { id: `${idPrefix}${a.id}`, name: "reason", required: true, maxlength: 500, value: reason }),
    el("p", { class: "form-error", role: "alert", hidden: true }),
    el("p", { class: "row" }, el("button", { type: "submit", class: "danger" }, t("patient.cancel_confirm")), el("button", { type: "button", onclick: () => form.remove() }, t("action.back"))),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const why = form.elements.reason.value.trim();
    if (!why) return form.elements.reason.focus();
    const ok = await submitting(form, () => api(`/api/v1/appointments/${a.id}/cancel`, { method: "POST", body: { reason: why } })).then(
      () => true,
      () => false,
    );
    if (ok) {
      toast(t("patient.cancelled"), "ok");
      await cancelled();
      document.getElementById(focusId).focus();
    }
  });
  item.append(form);
  form.elements.reason.focus();
}
