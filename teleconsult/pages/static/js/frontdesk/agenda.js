// The agenda of one day, all doctors or one: check in, no-show, move, cancel, join link.
import { api } from "../api.js";
import { t } from "../i18n.js";
import { showCancel } from "../schedule.js";
import { copyText, el, errorText, formatTime, isoDay, replace, toast } from "../ui.js";
import { patient } from "./patients.js";

const ACTIVE = new Set(["requested", "confirmed", "in_progress"]);

export function setupAgenda(doctors) {
  const day = document.getElementById("agenda-day");
  const doctorSelect = document.getElementById("agenda-doctor");
  const body = document.getElementById("agenda-body");
  const names = new Map(doctors.map((d) => [d.id, d.full_name]));
  let moveHandler = () => {};
  for (const d of doctors) doctorSelect.append(el("option", { value: d.id }, d.full_name));
  day.value = isoDay();
  const shift = (days) => {
    const d = new Date(`${day.value}T12:00:00`);
    d.setDate(d.getDate() + days);
    day.value = isoDay(d);
    reload();
  };
  document.getElementById("day-prev").addEventListener("click", () => shift(-1));
  document.getElementById("day-next").addEventListener("click", () => shift(1));
  document.getElementById("day-today").addEventListener("click", () => {
    day.value = isoDay();
    reload();
  });
  day.addEventListener("change", () => day.value && reload());
  doctorSelect.addEventListener("change", () => reload());
  document.getElementById("agenda-form").addEventListener("submit", (e) => {
    e.preventDefault();
    reload();
  });

  async function reload() {
    const q = new URLSearchParams({ day: day.value || isoDay() });
    if (doctorSelect.value) q.set("doctor", doctorSelect.value);
    let agenda;
    try {
      agenda = await api(`/api/v1/agenda?${q}`);
    } catch (err) {
      replace(body, el("p", { class: "form-error" }, errorText(err)), el("button", { type: "button", onclick: reload }, t("action.retry")));
      return;
    }
    const byDoctor = new Map();
    for (const a of agenda.items.sort((x, y) => x.starts_at.localeCompare(y.starts_at))) {
      if (!byDoctor.has(a.doctor_id)) byDoctor.set(a.doctor_id, []);
      byDoctor.get(a.doctor_id).push(a);
    }
    if (!byDoctor.size) {
      replace(body, el("p", { class: "muted" }, t("desk.nothing")));
      return;
    }
    const groups = [];
    for (const [doctorId, items] of byDoctor) {
      const rows = await Promise.all(items.map((a) => row(a)));
      groups.push(el("section", { class: "doctor-day", "aria-label": names.get(doctorId) || "" }, el("h2", {}, names.get(doctorId) || t("patient.a_doctor")), el("ul", { class: "cards" }, rows)));
    }
    replace(body, groups);
  }

  async function row(a) {
    const who = await patient(a.patient_id);
    const time = formatTime(a.starts_at);
    const state = a.checked_in_at && a.status !== "no_show" ? `${t(`status.${a.status}`)} · ${t("desk.checked_in")}` : t(`status.${a.status}`);
    const label = `${time} ${who.full_name}`;
    const actions = el("p", { class: "row" });
    const item = el(
      "li",
      { class: `card status-${a.status}`, dataset: { appointment: a.id } },
      el("h3", {}, `${time} — ${who.full_name}`),
      el("p", { class: "muted" }, `${t(`service.${a.service}`)} · ${state}${who.phone ? ` · ${who.phone}` : ""}`),
      actions,
    );
    if (ACTIVE.has(a.status)) {
      if (!a.checked_in_at) actions.append(action(t("desk.check_in"), t("desk.check_in_label", { who: label }), () => transition(a, "check-in", t("desk.checked_in_done", { who: who.full_name }))));
      // The server marks absent only once the appointment has begun.
      if (new Date(a.starts_at) <= new Date()) actions.append(action(t("desk.no_show"), t("desk.no_show_label", { who: label }), () => transition(a, "no-show", t("desk.no_show_done", { who: who.full_name }))));
      actions.append(action(t("patient.move"), t("desk.move_label", { who: label }), () => moveHandler(a, who)));
      actions.append(el("button", { type: "button", "aria-label": t("desk.cancel_label", { who: label }), onclick: () => showCancel(item, a, { idPrefix: "desk-reason-", cancelled: reload, focusId: "agenda-title" }) }, t("patient.cancel")));
      if (a.service === "video" || a.service === "audio") {
        actions.append(action(t("desk.copy_link"), t("desk.copy_link_label", { who: label }), () => copyLink(a)));
      }
    }
    return item;
  }

  function action(text, label, fn) {
    const button = el("button", { type: "button", "aria-label": label }, text);
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await fn();
      } finally {
        button.disabled = false;
      }
    });
    return button;
  }

  async function transition(a, step, done) {
    try {
      await api(`/api/v1/appointments/${a.id}/${step}`, { method: "POST" });
      toast(done, "ok");
      await reload();
    } catch (err) {
      toast(errorText(err), "error");
    }
  }

  async function copyLink(a) {
    // The room page with the appointment's opaque id only: no name, no time in the URL.
    const link = `${location.origin}/room.html?appointment=${encodeURIComponent(a.id)}`;
    const copied = await copyText(link, document.getElementById("copy-fallback"));
    toast(copied ? t("desk.link_copied") : t("desk.link_select"), "ok");
  }

  return {
    reload,
    onMove(fn) {
      moveHandler = fn;
    },
  };
}
