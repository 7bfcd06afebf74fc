// The front desk's money: what the clinic's patients owe (by day and patient), cash
// taken at the desk, refunds (full or partial, with a reason), waived fees, receipts.
// Every POST carries an Idempotency-Key kept per intent (money.js).
import { api } from "../api.js";
import { patient } from "../frontdesk/patients.js";
import { t } from "../i18n.js";
import { startPage } from "../shell.js";
import { el, errorText, formatDate, isoDay, replace, toast } from "../ui.js";
import { formatMoney, Intents, invoiceStatusText, parseMoney, postMoney } from "./money.js";

await startPage({ roles: ["receptionist", "admin"] });
const days = document.getElementById("owed-days");
const statusSelect = document.getElementById("owed-status");
const patientFilter = document.getElementById("owed-patient");
const more = document.getElementById("owed-more");
const intents = new Intents("tcDeskKeys");
let invoices = [];
let cursor = null;
let names = new Map();

// --- refund payouts (0023): refunds the provider has not paid back yet, with retry ---
async function fetchPayouts() {
  let owed = [];
  try {
    owed = (await api("/api/v1/refunds/owed?limit=100")).items;
  } catch (err) {
    toast(errorText(err), "error");
  }
  document.getElementById("owed-payouts").hidden = owed.length === 0;
  replace(document.getElementById("owed-payouts-list"), owed.map(payoutCard));
}

function payoutText(refund) {
  return t(`pay.payout_${refund.payout_status}`, { method: t(`pay.provider_${refund.payout_method}`) });
}

function payoutCard(refund) {
  const amount = formatMoney(refund.amount, refund.currency);
  const item = el(
    "li",
    { class: "card", dataset: { refund: refund.id } },
    el("p", {}, el("strong", {}, amount), " — ", refund.reason, " ", el("span", { class: `badge badge-payout-${refund.payout_status}` }, payoutText(refund))),
  );
  if (refund.payout_status === "failed") {
    const form = el("form", { class: "row", dataset: { panel: "payout" } }, el("p", { class: "form-error", role: "alert", hidden: true }));
    const again = (method) => async () => {
      const answer = await send(form, `payout|${refund.id}|${method}`, `/api/v1/refunds/${refund.id}/payouts`, { method });
      if (answer) await payoutDone(answer);
    };
    form.prepend(
      el("button", { type: "button", class: "primary", onclick: again("provider") }, t("pay.payout_retry", { method: t(`pay.provider_${refund.payout_method}`), amount })),
      el("button", { type: "button", onclick: again("cash") }, t("pay.payout_cash", { amount })),
    );
    item.append(form);
  }
  return item;
}

async function payoutDone(refund) {
  toast(payoutText(refund), refund.payout_status === "failed" ? "error" : "ok");
  await fetchPage(true);
}
// --- end refund payouts ---

async function fetchPage(reset) {
  const q = new URLSearchParams({ limit: "100" });
  if (statusSelect.value) q.set("status", statusSelect.value);
  if (!reset && cursor) q.set("cursor", cursor);
  try {
    const page = await api(`/api/v1/invoices?${q}`);
    invoices = reset ? page.items : invoices.concat(page.items);
    cursor = page.next_cursor;
  } catch (err) {
    toast(errorText(err), "error");
    return;
  }
  const people = await Promise.all([...new Set(invoices.map((i) => i.patient_id))].map((id) => patient(id)));
  names = new Map(people.map((p) => [p.id, p.full_name]));
  render();
  await fetchPayouts();
}

function render() {
  const wanted = patientFilter.value.trim().toLowerCase();
  const shown = invoices.filter((i) => !wanted || (names.get(i.patient_id) || "").toLowerCase().includes(wanted));
  const byDay = new Map();
  // --- payments follow-ups (issue 15): by the consultation's day, latest first ---
  for (const invoice of shown) {
    const day = isoDay(new Date(invoice.appointment_starts_at || invoice.created_at));
    if (!byDay.has(day)) byDay.set(day, []);
    byDay.get(day).push(invoice);
  }
  const sortedDays = [...byDay].sort(([a], [b]) => b.localeCompare(a));
  // --- end payments follow-ups ---
  const totals = new Map();
  for (const i of shown) totals.set(i.currency, (totals.get(i.currency) || 0) + i.outstanding);
  document.getElementById("owed-total").textContent = t("pay.desk_owed_total", {
    amount: [...totals].map(([c, a]) => formatMoney(a, c)).join(" + ") || formatMoney(0, "XOF"),
    count: shown.length,
  });
  document.getElementById("owed-empty").hidden = shown.length > 0;
  more.hidden = !cursor;
  replace(
    days,
    sortedDays.map(([day, list]) =>
      el(
        "section",
        { class: "owed-day", "aria-label": formatDate(`${day}T12:00:00`, { weekday: "long", day: "numeric", month: "long" }) },
        el("h2", {}, formatDate(`${day}T12:00:00`, { weekday: "long", day: "numeric", month: "long" })),
        el("ul", { class: "cards" }, list.sort((a, b) => (names.get(a.patient_id) || "").localeCompare(names.get(b.patient_id) || "")).map(card)),
      ),
    ),
  );
}

function card(invoice) {
  const who = names.get(invoice.patient_id) || "—";
  const c = invoice.currency;
  const item = el(
    "li",
    { class: "card", dataset: { invoice: invoice.id } },
    el("h3", {}, `${who} — ${invoice.number}`),
    el(
      "p",
      {},
      t("pay.total"),
      ": ",
      formatMoney(invoice.total, c),
      " · ",
      t("pay.outstanding"),
      ": ",
      el("strong", { class: "owed-amount" }, formatMoney(invoice.outstanding, c)),
      " ",
      el("span", { class: `badge badge-${invoice.status}` }, invoiceStatusText(invoice.status)),
    ),
  );
  const label = `${who} ${invoice.number}`;
  const actions = el("p", { class: "row" });
  const owed = invoice.status === "open" && invoice.outstanding > 0;
  if (owed) {
    actions.append(
      el("button", { type: "button", class: "primary", "aria-label": t("pay.desk_cash_label", { who: label }), onclick: () => cashForm(item, invoice, who) }, t("pay.desk_cash")),
      el("button", { type: "button", "aria-label": t("pay.desk_waive_label", { who: label }), onclick: () => waiveForm(item, invoice) }, t("pay.desk_waive")),
    );
  }
  if (invoice.paid > invoice.refunded) {
    actions.append(el("button", { type: "button", "aria-label": t("pay.desk_refund_label", { who: label }), onclick: () => refundForm(item, invoice) }, t("pay.desk_refund")));
  }
  actions.append(
    el("a", { class: "button", href: `/receipt.html?invoice=${invoice.id}`, target: "_blank", rel: "noopener", "aria-label": t("pay.desk_receipt_label", { who: label }) }, t("pay.desk_receipt")),
  );
  item.append(actions);
  return item;
}

function panel(item, name, ...children) {
  item.querySelector("form.pay-panel")?.remove();
  const form = el("form", { class: "stack pay-panel confirm", dataset: { panel: name } }, ...children, el("p", { class: "form-error", role: "alert", hidden: true }));
  item.append(form);
  return form;
}

function buttons(form, confirmText, kind = "primary") {
  form.append(el("p", { class: "row" }, el("button", { type: "submit", class: kind }, confirmText), el("button", { type: "button", onclick: () => form.remove() }, t("action.back"))));
}

/** Send a money POST for the panel's intent; keep what was typed and say why on failure. */
async function send(form, intent, path, body) {
  const error = form.querySelector(".form-error");
  const controls = form.querySelectorAll("button, input, select");
  controls.forEach((c) => (c.disabled = true));
  form.setAttribute("aria-busy", "true");
  try {
    const answer = await postMoney(path, intents.key(intent), body);
    intents.fresh(intent); // done: the same again later is a new intent
    return answer;
  } catch (err) {
    // A refusal is stored against its key and would be replayed: the next try is new.
    if (err.status >= 400 && err.status < 500 && err.code !== "idempotency_key_in_flight") intents.fresh(intent);
    form.classList.add("unsent");
    error.textContent = err.status === 0 ? t("pay.unsent") : err.code === "idempotency_key_in_flight" ? t("pay.in_flight") : errorText(err);
    error.hidden = false;
    return null;
  } finally {
    controls.forEach((c) => (c.disabled = false));
    form.removeAttribute("aria-busy");
  }
}

async function done(message) {
  toast(message, "ok");
  await fetchPage(true);
  document.getElementById("owed-title").focus();
}

function cashForm(item, invoice, who) {
  const amount = formatMoney(invoice.outstanding, invoice.currency);
  const form = panel(item, "cash", el("p", {}, t("pay.desk_cash_confirm", { amount, who })));
  buttons(form, t("pay.desk_cash_take", { amount }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const paid = await send(form, `cash|${invoice.id}`, `/api/v1/invoices/${invoice.id}/cash`);
    if (paid) await done(t("pay.desk_cash_done", { amount: formatMoney(paid.amount, paid.currency), number: invoice.number }));
  });
  form.querySelector("button[type=submit]").focus();
}

function waiveForm(item, invoice) {
  const id = `waive-${invoice.id}`;
  const form = panel(
    item,
    "waive",
    el("label", { for: id }, t("pay.desk_reason")),
    el("input", { id, name: "reason", required: true, maxlength: 500 }),
  );
  buttons(form, t("pay.desk_waive_confirm", { amount: formatMoney(invoice.outstanding, invoice.currency) }), "danger");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const reason = form.elements.reason.value.trim();
    if (!reason) return form.elements.reason.focus();
    if (await send(form, `waive|${invoice.id}|${reason}`, `/api/v1/invoices/${invoice.id}/waiver`, { reason })) await done(t("pay.desk_waived", { number: invoice.number }));
  });
  form.elements.reason.focus();
}

async function refundForm(item, summary) {
  let invoice;
  try {
    invoice = await api(`/api/v1/invoices/${summary.id}`);
  } catch (err) {
    return toast(errorText(err), "error");
  }
  const refundable = (invoice.payments || []).filter((p) => p.status === "succeeded" && p.amount > p.refunded);
  if (!refundable.length) return toast(t("pay.desk_nothing_to_refund"), "error");
  const c = invoice.currency;
  const pid = `refund-payment-${invoice.id}`;
  const aid = `refund-amount-${invoice.id}`;
  const rid = `refund-reason-${invoice.id}`;
  const select = el(
    "select",
    { id: pid, name: "payment" },
    refundable.map((p) => el("option", { value: p.id }, t("pay.desk_refund_of", { provider: t(`pay.provider_${p.provider}`), amount: formatMoney(p.amount - p.refunded, c) }))),
  );
  const form = panel(
    item,
    "refund",
    el("label", { for: pid }, t("pay.desk_refund_payment")),
    select,
    el("label", { for: aid }, t("pay.desk_refund_amount", { currency: c })),
    el("p", { class: "help", id: `${aid}-help` }, t("pay.desk_refund_amount_help")),
    el("input", { id: aid, name: "amount", inputmode: "decimal", autocomplete: "off", "aria-describedby": `${aid}-help` }),
    el("label", { for: rid }, t("pay.desk_reason")),
    el("input", { id: rid, name: "reason", required: true, maxlength: 500 }),
  );
  const fill = () => {
    const p = refundable.find((x) => x.id === select.value);
    form.elements.amount.placeholder = formatMoney(p.amount - p.refunded, c);
  };
  select.addEventListener("change", fill);
  fill();
  buttons(form, t("pay.desk_refund_send"), "danger");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const p = refundable.find((x) => x.id === select.value);
    const left = p.amount - p.refunded;
    const typed = form.elements.amount.value.trim();
    const amount = typed ? parseMoney(typed, c) : left;
    const error = form.querySelector(".form-error");
    if (!amount || amount > left) {
      error.textContent = t("pay.desk_refund_amount_invalid", { max: formatMoney(left, c) });
      error.hidden = false;
      return form.elements.amount.focus();
    }
    const reason = form.elements.reason.value.trim();
    if (!reason) return form.elements.reason.focus();
    const body = { amount, reason };
    const refunded = await send(form, `refund|${p.id}|${amount}|${reason}`, `/api/v1/payments/${p.id}/refunds`, body);
    if (refunded) await done(`${t("pay.desk_refunded", { amount: formatMoney(amount, c), number: invoice.number })} ${refunded.refund ? payoutText(refunded.refund) : ""}`.trim());
  });
  select.focus();
}

statusSelect.addEventListener("change", () => fetchPage(true));
patientFilter.addEventListener("input", render);
more.addEventListener("click", () => fetchPage(false));
document.getElementById("owed-filter").addEventListener("submit", (e) => e.preventDefault());
await fetchPage(true);
