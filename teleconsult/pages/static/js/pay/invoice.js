// An invoice as the payment pages show it: number, lines, tax, what was paid,
// refunded or waived, and what is still owed. Amounts in the currency's minor unit.
import { t } from "../i18n.js";
import { el, formatDate } from "../ui.js";
import { formatMoney, invoiceStatusText } from "./money.js";

function row(label, amount, currency, cls) {
  return el("tr", { class: cls }, el("th", { scope: "row" }, label), el("td", { class: "amount" }, formatMoney(amount, currency)));
}

/** The invoice's lines and totals as a table. */
export function invoiceTable(invoice) {
  const c = invoice.currency;
  const body = el("tbody");
  for (const line of invoice.lines) body.append(row(line.description, line.amount, c, `line line-${line.kind}`));
  const foot = el("tfoot");
  foot.append(row(t("pay.total"), invoice.total, c, "total"));
  if (invoice.paid) foot.append(row(t("pay.paid_amount"), invoice.paid, c));
  if (invoice.refunded) foot.append(row(t("pay.refunded_amount"), invoice.refunded, c));
  if (invoice.waived) foot.append(row(t("pay.waived_amount"), invoice.waived, c));
  foot.append(row(t("pay.outstanding"), invoice.outstanding, c, "outstanding"));
  return el(
    "table",
    { class: "money" },
    el("caption", { class: "sr-only" }, t("pay.invoice_caption", { number: invoice.number })),
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, t("pay.item")), el("th", { scope: "col", class: "amount" }, t("pay.amount")))),
    body,
    foot,
  );
}

/** Number, date, status badge and table. */
export function invoiceBlock(invoice) {
  return [
    el(
      "p",
      { class: "invoice-head" },
      el("span", {}, t("pay.invoice_number", { number: invoice.number })),
      " · ",
      el("span", {}, formatDate(invoice.created_at, { day: "numeric", month: "long", year: "numeric" })),
      " ",
      el("strong", { class: `badge badge-${invoice.status}`, id: "invoice-status" }, invoiceStatusText(invoice.status)),
    ),
    invoiceTable(invoice),
  ];
}
