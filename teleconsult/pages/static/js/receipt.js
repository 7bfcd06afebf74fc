// A printable receipt: receipt.html?invoice=<id> (only the opaque id in the URL).
// Clinic, invoice number, lines and tax, each payment and what was refunded of it,
// and the balance. The print stylesheet (css/pay.css, @media print) keeps the receipt.
import { api } from "./api.js";
import { t } from "./i18n.js";
import { startPage } from "./shell.js";
import { el, errorText, formatDate, formatDateTime, replace, toast } from "./ui.js";
import { invoiceTable } from "./pay/invoice.js";
import { formatMoney, invoiceStatusText } from "./pay/money.js";

const { user } = await startPage({ roles: ["patient", "receptionist", "admin"] });
const id = new URLSearchParams(location.search).get("invoice") || "";
document.getElementById("receipt-print").addEventListener("click", () => window.print());

async function patientName(invoice) {
  if (user.role === "patient") return user.full_name;
  try {
    return (await api(`/api/v1/patients/${invoice.patient_id}`)).full_name;
  } catch {
    return "—";
  }
}

function paymentsTable(invoice) {
  const c = invoice.currency;
  const rows = [];
  for (const p of [...(invoice.payments || [])].sort((a, b) => a.created_at.localeCompare(b.created_at))) {
    rows.push(
      el(
        "tr",
        { class: `payment payment-${p.status}` },
        el("td", {}, formatDateTime(p.finalized_at || p.created_at)),
        el("td", {}, t(`pay.provider_${p.provider}`), p.provider_reference ? el("span", { class: "ref" }, ` ${p.provider_reference}`) : null),
        el("td", {}, t(`receipt.payment_${p.status}`)),
        el("td", { class: "amount" }, p.status === "succeeded" ? formatMoney(p.amount, c) : el("s", {}, formatMoney(p.amount, c))),
      ),
    );
    // --- payments follow-ups (issue 15): each refund with its date and reason ---
    const refunds = (invoice.refunds || []).filter((r) => r.payment_id === p.id);
    for (const r of refunds) {
      rows.push(
        el(
          "tr",
          { class: "refund" },
          el("td", {}, formatDateTime(r.created_at)),
          el("td", {}, t("receipt.refund_of", { provider: t(`pay.provider_${p.provider}`) }), r.reason ? el("span", { class: "ref" }, ` ${r.reason}`) : null),
          el("td", { class: "payout" }, r.payout_status ? t(`receipt.payout_${r.payout_status}`, { method: t(`pay.provider_${r.payout_method}`) }) : t("receipt.refunded")),
          el("td", { class: "amount" }, formatMoney(-r.amount, c)),
        ),
      );
    }
    // --- end payments follow-ups ---
    if (p.refunded && !refunds.length) {
      rows.push(
        el(
          "tr",
          { class: "refund" },
          el("td", {}, ""),
          el("td", {}, t("receipt.refund_of", { provider: t(`pay.provider_${p.provider}`) })),
          el("td", {}, t("receipt.refunded")),
          el("td", { class: "amount" }, formatMoney(-p.refunded, c)),
        ),
      );
    }
  }
  if (!rows.length) return null;
  return el(
    "table",
    { class: "money" },
    el("thead", {}, el("tr", {}, ...["receipt.when", "receipt.method", "receipt.state", "pay.amount"].map((k) => el("th", { scope: "col", class: k === "pay.amount" ? "amount" : null }, t(k))))),
    el("tbody", {}, rows),
  );
}

async function show() {
  let invoice;
  try {
    if (!/^[0-9a-f-]{36}$/i.test(id)) throw Object.assign(new Error("no id"), { status: 404 });
    invoice = await api(`/api/v1/invoices/${id}`);
  } catch (err) {
    document.getElementById("receipt").hidden = true;
    document.getElementById("receipt-missing").hidden = false;
    if (err.status !== 404) toast(errorText(err), "error", { timeoutMs: 0 });
    return;
  }
  let clinic = null;
  try {
    clinic = await api(`/api/v1/clinics/${user.clinic_id}`);
  } catch {
    clinic = null;
  }
  document.getElementById("receipt-clinic").textContent = clinic?.name || "";
  document.getElementById("receipt-number").textContent = invoice.number;
  document.getElementById("receipt-date").textContent = formatDate(invoice.created_at, { day: "numeric", month: "long", year: "numeric" });
  document.getElementById("receipt-patient").textContent = await patientName(invoice);
  document.getElementById("receipt-status").textContent = invoiceStatusText(invoice.status);
  replace(document.getElementById("receipt-lines"), invoiceTable(invoice));
  const payments = paymentsTable(invoice);
  document.getElementById("receipt-no-payments").hidden = Boolean(payments);
  replace(document.getElementById("receipt-payments"), payments);
  document.getElementById("receipt-balance").textContent = t("receipt.balance", { amount: formatMoney(invoice.outstanding, invoice.currency) });
  document.getElementById("receipt-printed").textContent = t("receipt.printed", { when: formatDateTime(new Date()) });
  document.title = `${t("receipt.title")} ${invoice.number}`;
  document.body.classList.add("receipt-ready");
}

await show();
