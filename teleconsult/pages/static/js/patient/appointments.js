// The patient's appointments: join the room, move, cancel.
import { api } from "../api.js";
import { t } from "../i18n.js";
import { showCancel } from "../schedule.js";
import { el, errorText, formatDateTime, replace, toast } from "../ui.js";
import { payLink } from "../pay/entry.js"; // --- payments (issue 15) ---

const ACTIVE = new Set(["requested", "confirmed", "in_progress"]);
const ROOM = new Set(["video", "audio"]);
let doctors = new Map();

export function setDoctors(list) {
  doctors = new Map(list.map((d) => [d.id, d]));
}

export function doctorName(id) {
  return doctors.get(id)?.full_name || t("patient.a_doctor");
}

/** The room page for an appointment: only its opaque id in the URL. */
export function joinHref(appointmentId) {
  return `/room.html?appointment=${encodeURIComponent(appointmentId)}`;
}

export async function loadAppointments(booking) {
  const list = document.getElementById("appointment-list");
  const from = new Date(Date.now() - 2 * 3600 * 1000).toISOString();
  const to = new Date(Date.now() + 90 * 86400 * 1000).toISOString();
  let page;
  try {
    page = await api(`/api/v1/appointments?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}&limit=100`);
  } catch (err) {
    toast(errorText(err), "error");
    return;
  }
  const items = page.items.filter((a) => ACTIVE.has(a.status)).sort((a, b) => a.starts_at.localeCompare(b.starts_at));
  document.getElementById("appointments-empty").hidden = items.length > 0;
  replace(list, items.map((a) => card(a, booking)));
}

function card(a, booking) {
  const when = formatDateTime(a.starts_at);
  const title = el("h3", {}, `${when} — ${doctorName(a.doctor_id)}`);
  const kind = el("p", { class: "muted" }, `${t(`service.${a.service}`)} · ${t(`status.${a.status}`)}`);
  const actions = el("p", { class: "row" });
  if (ROOM.has(a.service)) actions.append(el("a", { class: "button primary", href: joinHref(a.id) }, t("patient.join")));
  actions.append(payLink(a.id, when)); // --- payments (issue 15): pay or see the receipt ---
  actions.append(
    el("button", { type: "button", onclick: () => booking.startMove(a) , "aria-label": t("patient.move_label", { when }) }, t("patient.move")),
    el("button", { type: "button", onclick: () => showCancel(item, a, { idPrefix: "reason-", reason: t("patient.cancel_default_reason"), cancelled: () => loadAppointments(booking), focusId: "appointments-title" }), "aria-label": t("patient.cancel_label", { when }) }, t("patient.cancel")),
  );
  const item = el("li", { class: "card", dataset: { appointment: a.id } }, title, kind, actions);
  return item;
}
