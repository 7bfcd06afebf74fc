// Booking or moving an appointment for a patient found by name or phone.
import { api } from "../api.js";
import { t } from "../i18n.js";
import { slotDays } from "../schedule.js";
import { clearError, el, errorText, formatDateTime, isoDay, replace, submitting, toast } from "../ui.js";
import { remember } from "./patients.js";

const DAYS = 7;

export function setupDeskBooking(doctors, { onChanged }) {
  const state = { patient: null, slot: null, moving: null };
  const search = document.getElementById("patient-search");
  const results = document.getElementById("patient-results");
  const choice = document.getElementById("desk-choice");
  const doctorSelect = document.getElementById("desk-doctor");
  const serviceSelect = document.getElementById("desk-service");
  const fromDay = document.getElementById("desk-day");
  const slotsBox = document.getElementById("desk-slots");
  const confirmForm = document.getElementById("desk-confirm");
  const moveBox = document.getElementById("desk-move");

  for (const d of doctors) doctorSelect.append(el("option", { value: d.id }, d.full_name));
  const fillServices = (keep) => {
    const doctor = doctors.find((d) => d.id === doctorSelect.value);
    replace(serviceSelect, (doctor ? doctor.services : []).map((s) => el("option", { value: s, selected: s === keep }, t(`service.${s}`))));
  };
  doctorSelect.addEventListener("change", () => fillServices());
  fillServices();
  fromDay.value = isoDay();

  search.addEventListener("submit", async (event) => {
    event.preventDefault();
    const q = search.elements.q.value.trim();
    if (!q) return;
    let page;
    try {
      page = await api(`/api/v1/patients?${new URLSearchParams({ q, limit: "20" })}`);
    } catch (err) {
      replace(results, el("li", { class: "form-error" }, errorText(err)));
      return;
    }
    if (!page.items.length) {
      replace(results, el("li", { class: "muted" }, t("desk.no_patient")));
      return;
    }
    replace(
      results,
      page.items.map((p) => {
        remember(p);
        const label = `${p.full_name}${p.phone ? ` · ${p.phone}` : ""}`;
        return el("li", { class: "card" }, el("button", { type: "button", class: "link", onclick: () => choose(p) }, label));
      }),
    );
  });

  function choose(p) {
    state.patient = p;
    replace(results);
    document.getElementById("desk-patient").textContent = t("desk.booking_for", { who: p.full_name });
    choice.hidden = false;
    doctorSelect.focus();
  }

  async function findSlots() {
    confirmForm.hidden = true;
    const from = new Date(`${fromDay.value || isoDay()}T00:00:00`);
    const to = new Date(from.getTime() + DAYS * 86400 * 1000);
    const q = new URLSearchParams({ doctor: doctorSelect.value, service: serviceSelect.value, from: from.toISOString(), to: to.toISOString() });
    replace(slotsBox, el("p", { class: "muted" }, t("action.loading")));
    let slots;
    try {
      slots = (await api(`/api/v1/slots?${q}`)).items.filter((s) => new Date(s.starts_at) > new Date());
    } catch (err) {
      replace(slotsBox, el("p", { class: "form-error" }, errorText(err)));
      return;
    }
    if (!slots.length) {
      replace(slotsBox, el("p", { class: "muted" }, t("patient.no_slots")));
      return;
    }
    replace(slotsBox, slotDays(slots, pick, "h3"));
  }
  document.getElementById("desk-slots-search").addEventListener("click", findSlots);

  function pick(slot) {
    state.slot = slot;
    clearError(confirmForm);
    const doctor = doctors.find((d) => d.id === doctorSelect.value);
    const what = { doctor: doctor ? doctor.full_name : "", service: t(`service.${serviceSelect.value}`), when: formatDateTime(slot.starts_at), who: state.patient.full_name };
    document.getElementById("desk-confirm-text").textContent = state.moving ? t("desk.confirm_move", what) : t("desk.confirm_book", what);
    confirmForm.hidden = false;
    confirmForm.querySelector("button[type=submit]").focus();
  }

  document.getElementById("desk-confirm-back").addEventListener("click", () => {
    confirmForm.hidden = true;
  });
  document.getElementById("desk-move-cancel").addEventListener("click", () => endMove());

  confirmForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const moving = state.moving;
    const done = await submitting(confirmForm, () =>
      moving
        ? api(`/api/v1/appointments/${moving.id}/reschedule`, { method: "POST", body: { starts_at: state.slot.starts_at, version: moving.version } })
        : api("/api/v1/appointments", { method: "POST", body: { doctor_id: doctorSelect.value, patient_id: state.patient.id, service: serviceSelect.value, starts_at: state.slot.starts_at } }),
    ).catch(() => null);
    if (!done) return;
    toast(moving ? t("desk.moved", { who: state.patient.full_name, when: formatDateTime(done.starts_at) }) : t("desk.booked", { who: state.patient.full_name, when: formatDateTime(done.starts_at) }), "ok", { timeoutMs: 10000 });
    confirmForm.hidden = true;
    replace(slotsBox);
    endMove();
    choice.hidden = true;
    state.patient = null;
    await onChanged();
    document.getElementById("agenda-title").focus();
  });

  function endMove() {
    state.moving = null;
    moveBox.hidden = true;
  }

  return {
    startMove(appointment, patient) {
      state.moving = appointment;
      state.patient = patient;
      document.getElementById("desk-move-text").textContent = t("desk.moving", { who: patient.full_name, when: formatDateTime(appointment.starts_at) });
      moveBox.hidden = false;
      document.getElementById("desk-patient").textContent = t("desk.booking_for", { who: patient.full_name });
      choice.hidden = false;
      doctorSelect.value = appointment.doctor_id;
      fillServices(appointment.service);
      fromDay.value = isoDay();
      document.getElementById("desk-book-title").focus();
      findSlots();
    },
  };
}
