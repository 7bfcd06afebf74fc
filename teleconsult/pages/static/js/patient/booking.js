// Find a doctor, search free slots, book; or move an appointment to another slot.
import { api } from "../api.js";
import { t } from "../i18n.js";
import { slotDays } from "../schedule.js";
import { clearError, el, errorText, formatDateTime, replace, submitting, toast } from "../ui.js";
import { doctorName, setDoctors } from "./appointments.js";

const DAYS = 7; // one week of slots per search: a small answer on a slow link
const BOOKABLE = ["video", "audio", "chat", "in_person"];

export async function setupBooking(user, { onBooked }) {
  const state = { doctor: null, service: null, from: startOfToday(), picked: null, moving: null };
  let doctors = [];
  try {
    doctors = (await api("/api/v1/doctors")).items;
  } catch (err) {
    toast(errorText(err), "error");
  }
  setDoctors(doctors);
  const filter = document.getElementById("doctor-filter");
  const list = document.getElementById("doctor-list");
  const renderDoctors = () => {
    const words = filter.value.trim().toLowerCase();
    const shown = doctors.filter((d) => !words || `${d.full_name} ${d.specialties.join(" ")}`.toLowerCase().includes(words));
    replace(list, shown.length ? shown.map((d) => doctorCard(d)) : [el("li", { class: "muted" }, t("patient.no_doctor"))]);
  };
  const doctorCard = (d) =>
    el(
      "li",
      { class: "card" },
      el("h3", {}, d.full_name),
      d.specialties.length ? el("p", { class: "muted" }, d.specialties.join(", ")) : null,
      el(
        "p",
        { class: "row" },
        d.services
          .filter((s) => BOOKABLE.includes(s))
          .map((s) => el("button", { type: "button", onclick: () => pick(d, s), "aria-label": t("patient.see_slots", { doctor: d.full_name, service: t(`service.${s}`) }) }, t(`service.${s}`))),
      ),
    );
  filter.addEventListener("input", renderDoctors);
  renderDoctors();

  const slotsBox = document.getElementById("slots");
  const confirmForm = document.getElementById("confirm-form");
  const modeBox = document.getElementById("book-mode");

  async function pick(doctor, service) {
    state.doctor = doctor;
    state.service = service;
    state.from = startOfToday();
    await showSlots(true);
  }

  async function showSlots(focus) {
    confirmForm.hidden = true;
    const from = state.from;
    const to = new Date(from.getTime() + DAYS * 86400 * 1000);
    const title = document.getElementById("slots-title");
    title.textContent = t("patient.slots_title", { doctor: state.doctor.full_name, service: t(`service.${state.service}`) });
    slotsBox.hidden = false;
    const days = document.getElementById("slot-days");
    replace(days, el("p", { class: "muted" }, t("action.loading")));
    document.getElementById("slots-earlier").disabled = from <= startOfToday();
    if (focus) title.focus();
    let slots;
    try {
      const q = new URLSearchParams({ doctor: state.doctor.id, service: state.service, from: from.toISOString(), to: to.toISOString() });
      slots = (await api(`/api/v1/slots?${q}`)).items;
    } catch (err) {
      replace(days, el("p", { class: "form-error" }, errorText(err)), el("button", { type: "button", onclick: () => showSlots(true) }, t("action.retry")));
      return;
    }
    const now = Date.now();
    slots = slots.filter((s) => new Date(s.starts_at).getTime() > now);
    if (!slots.length) {
      replace(days, el("p", { class: "muted" }, t("patient.no_slots")));
      return;
    }
    replace(days, slotDays(slots, confirm, "h4"));
  }

  function confirm(slot) {
    state.picked = slot;
    clearError(confirmForm);
    const what = { doctor: state.doctor.full_name, service: t(`service.${state.service}`), when: formatDateTime(slot.starts_at) };
    document.getElementById("confirm-text").textContent = state.moving ? t("patient.confirm_move", what) : t("patient.confirm_book", what);
    confirmForm.hidden = false;
    document.getElementById("confirm-book").focus();
  }

  document.getElementById("slots-later").addEventListener("click", () => {
    state.from = new Date(state.from.getTime() + DAYS * 86400 * 1000);
    showSlots(false);
  });
  document.getElementById("slots-earlier").addEventListener("click", () => {
    state.from = new Date(Math.max(startOfToday().getTime(), state.from.getTime() - DAYS * 86400 * 1000));
    showSlots(false);
  });
  document.getElementById("confirm-cancel").addEventListener("click", () => {
    confirmForm.hidden = true;
    document.getElementById("slots-title").focus();
  });
  document.getElementById("book-mode-cancel").addEventListener("click", () => endMove());

  confirmForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError(confirmForm);
    const slot = state.picked;
    const moving = state.moving;
    // Not retried by itself (a booking is not idempotent); on failure the choice stays
    // on screen, marked unsent, and Confirm sends it again.
    const done = await submitting(confirmForm, () =>
      moving
        ? api(`/api/v1/appointments/${moving.id}/reschedule`, { method: "POST", body: { starts_at: slot.starts_at, version: moving.version } })
        : api("/api/v1/appointments", { method: "POST", body: { doctor_id: state.doctor.id, service: state.service, starts_at: slot.starts_at } }),
    ).catch((err) => {
      if (err.code === "slot_taken") showSlots(false);
      return null;
    });
    if (!done) return;
    confirmForm.hidden = true;
    slotsBox.hidden = true;
    toast(moving ? t("patient.moved", { when: formatDateTime(done.starts_at) }) : t("patient.booked", { when: formatDateTime(done.starts_at) }), "ok", { timeoutMs: 10000 });
    endMove();
    await onBooked(done);
    const card = document.querySelector(`[data-appointment="${done.id}"]`);
    const title = card ? card.querySelector("h3") : document.getElementById("appointments-title");
    if (card) title.tabIndex = -1;
    title.focus();
  });

  function endMove() {
    state.moving = null;
    modeBox.hidden = true;
  }

  return {
    async startMove(appointment) {
      const doctor = doctors.find((d) => d.id === appointment.doctor_id) || { id: appointment.doctor_id, full_name: doctorName(appointment.doctor_id), specialties: [] };
      state.moving = appointment;
      document.getElementById("book-mode-text").textContent = t("patient.moving", { when: formatDateTime(appointment.starts_at) });
      modeBox.hidden = false;
      state.doctor = doctor;
      state.service = appointment.service;
      state.from = startOfToday();
      await showSlots(true);
    },
  };
}

function startOfToday() {
  const d = new Date();
  d.setHours(0, 0, 0, 0);
  return d;
}
