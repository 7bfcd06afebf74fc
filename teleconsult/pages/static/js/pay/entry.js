// The way in from the patient's appointments: "Pay 5,000 F CFA" on an appointment whose
// invoice is still owed, "Receipt" on one that is settled, nothing when there is no
// invoice (a doctor without a fee). One request for all the patient's invoices per render.
import { api } from "../api.js";
import { t } from "../i18n.js";
import { el } from "../ui.js";
import { formatMoney } from "./money.js";

let batch = null;
let fetchedAt = 0;

function invoices() {
  // Appointment cards of one render share one request; a later render asks again
  // (a booking just made raised a new invoice).
  if (!batch || Date.now() - fetchedAt > 2000) {
    fetchedAt = Date.now();
    batch = api("/api/v1/invoices?limit=100").then(
      (page) => new Map(page.items.filter((i) => i.appointment_id).map((i) => [i.appointment_id, i])),
      () => new Map(),
    );
  }
  return batch;
}

/** A link (filled in once the invoices are in) for the appointment's card. */
export function payLink(appointmentId, when) {
  const link = el("a", { class: "button", hidden: true, dataset: { pay: appointmentId } });
  invoices().then((byAppointment) => {
    const invoice = byAppointment.get(appointmentId);
    if (!invoice) return;
    if (invoice.status === "open" && invoice.outstanding > 0) {
      const amount = formatMoney(invoice.outstanding, invoice.currency);
      link.href = `/pay.html?appointment=${encodeURIComponent(appointmentId)}`;
      link.textContent = t("pay.patient_link", { amount });
      link.setAttribute("aria-label", t("pay.patient_link_label", { amount, when }));
    } else if (invoice.status !== "void") {
      link.href = `/receipt.html?invoice=${encodeURIComponent(invoice.id)}`;
      link.textContent = t("pay.receipt");
      link.setAttribute("aria-label", t("pay.receipt_label", { when }));
    } else return;
    link.hidden = false;
  });
  return link;
}
