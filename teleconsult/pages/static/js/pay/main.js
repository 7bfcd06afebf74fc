// The patient pays an appointment's invoice: mobile money (MTN MoMo, M-Pesa: a phone
// number, then approve on the phone while this page asks how it went) or card (the
// gateway's page, then back here). pay.html?appointment=<id>, or ?payment=<id> when
// coming back from the card page or reloading while a payment is under way.
import { api } from "../api.js";
import { t } from "../i18n.js";
import { startPage } from "../shell.js";
import { el, errorText, replace, toast } from "../ui.js";
import { invoiceBlock } from "./invoice.js";
import { failureText, formatMoney, Intents, pollPayment, postMoney } from "./money.js";

const { user } = await startPage({ roles: ["patient"] });
const params = new URLSearchParams(location.search);
const form = document.getElementById("pay-form");
const state = document.getElementById("pay-state");
const section = document.getElementById("invoice");
const intents = new Intents("tcPayKeys");
let invoice = null;
let poller = null;

const ID = /^[0-9a-f-]{36}$/i;

// --- payments follow-ups (issue 15): back from the card gateway ---
// The gateway returns to /pay.html?payment=<id> with its trxref and reference added.
// They prove nothing (the server asks the gateway), so they are only dropped from the
// address: a reload or a bookmark is the plain payment page.
if (params.has("trxref") || params.has("reference")) {
  params.delete("trxref");
  params.delete("reference");
  history.replaceState(history.state, "", `/pay.html?${params}`);
}
// --- end payments follow-ups ---

async function load() {
  const paymentId = params.get("payment");
  const appointmentId = params.get("appointment");
  try {
    if (paymentId && ID.test(paymentId)) {
      const payment = await api(`/api/v1/payments/${paymentId}`);
      invoice = await api(`/api/v1/invoices/${payment.invoice_id}`);
    } else if (appointmentId && ID.test(appointmentId)) {
      invoice = await api(`/api/v1/appointments/${appointmentId}/invoice`);
    } else {
      invoice = null;
    }
  } catch (err) {
    if (err.status !== 404) {
      toast(errorText(err), "error", { timeoutMs: 0 });
      return false;
    }
    invoice = null;
  }
  return true;
}

function latest(payments) {
  return [...(payments || [])].sort((a, b) => b.created_at.localeCompare(a.created_at))[0] || null;
}

function render({ focus = false } = {}) {
  document.getElementById("pay-missing").hidden = Boolean(invoice);
  section.hidden = !invoice;
  if (!invoice) {
    form.hidden = true;
    state.hidden = true;
    return;
  }
  replace(section, invoiceBlock(invoice));
  const last = latest(invoice.payments);
  if (last && last.status === "pending") return showPending(last);
  const owed = invoice.status === "open" && invoice.outstanding > 0;
  if (!owed) {
    const paid = invoice.status === "paid";
    showFinal(paid ? "ok" : "info", paid ? t("pay.paid") : t(`pay.invoice_${invoice.status}`));
    if (invoice.status !== "void") state.append(el("p", {}, el("a", { href: `/receipt.html?invoice=${invoice.id}` }, t("pay.receipt"))));
    form.hidden = true;
  } else {
    state.hidden = true;
    if (last && last.status === "failed" && params.get("payment") === last.id) showFinal("error", failureText(last.failure_reason), true);
    showForm();
  }
  if (focus) (state.hidden ? document.getElementById("pay-title") : state).focus();
}

function showFinal(kind, message, canRetry = false) {
  state.hidden = false;
  state.className = `pay-state pay-${kind}`;
  replace(
    state,
    el("p", { class: "pay-outcome", id: "pay-outcome" }, message),
    canRetry ? el("p", { class: "help" }, t("pay.retry_help")) : null,
  );
}

function showForm() {
  form.hidden = false;
  const phone = form.elements.phone;
  if (!phone.value && user.phone) phone.value = user.phone.replace(/^\+/, "");
  document.getElementById("pay-submit").textContent = t("pay.pay_amount", { amount: formatMoney(invoice.outstanding, invoice.currency) });
  syncProvider();
}

function syncProvider() {
  const card = form.elements.provider.value === "card";
  document.getElementById("pay-phone-field").hidden = card;
  document.getElementById("pay-card-help").hidden = !card;
  form.elements.phone.required = !card;
}

function showPending(payment) {
  form.hidden = true;
  state.hidden = false;
  state.className = "pay-state pay-pending";
  const amount = formatMoney(payment.amount, payment.currency);
  const children = [el("p", { class: "pay-outcome", id: "pay-outcome" }, t("pay.pending"))];
  if (payment.provider === "card") {
    children.push(el("p", {}, t("pay.pending_card", { amount })));
    if (payment.redirect_url) children.push(el("p", {}, el("a", { class: "button", href: payment.redirect_url }, t("pay.open_card_page"))));
  } else {
    children.push(el("p", {}, t("pay.pending_phone", { amount })));
  }
  children.push(el("p", { class: "help" }, t("pay.pending_help")));
  replace(state, children);
  poller?.stop();
  poller = pollPayment(payment.id);
  poller.done.then(
    async (final) => {
      if (!final) return;
      intents.clear(); // the intent is spent: trying again is a new payment, with a new key
      await load();
      render({ focus: true });
      if (final.status === "failed") showFinal("error", failureText(final.failure_reason), true);
    },
    (err) => toast(errorText(err), "error", { timeoutMs: 0 }),
  );
}

function formError(message) {
  const line = form.querySelector(".form-error");
  line.textContent = message || "";
  line.hidden = !message;
  form.classList.toggle("unsent", Boolean(message));
}

async function submit(event) {
  event.preventDefault();
  const provider = form.elements.provider.value;
  const phone = form.elements.phone.value.replace(/[\s().-]/g, "").replace(/^\+/, "");
  if (provider !== "card" && !/^[0-9]{8,15}$/.test(phone)) {
    formError(t("pay.phone_invalid"));
    form.elements.phone.focus();
    return;
  }
  formError("");
  // The same invoice, method and number is the same intent: the same key on every retry.
  const intent = `${invoice.id}|${provider}|${provider === "card" ? "" : phone}`;
  const key = intents.key(intent);
  const body = { provider };
  if (provider !== "card") body.payer = phone;
  else if (user.email) body.payer = user.email;
  const button = document.getElementById("pay-submit");
  button.disabled = true;
  form.setAttribute("aria-busy", "true");
  let payment;
  try {
    payment = await postMoney(`/api/v1/invoices/${invoice.id}/payments`, key, body);
  } catch (err) {
    if (err.code === "payment_in_progress") {
      await load();
      return render({ focus: true });
    }
    // A refusal is stored against its key and would be replayed: the next try is new.
    if (err.status >= 400 && err.status < 500 && err.code !== "idempotency_key_in_flight") intents.fresh(intent);
    const offline = err.status === 0;
    formError(offline ? t("pay.unsent") : err.code === "idempotency_key_in_flight" ? t("pay.in_flight") : errorText(err));
    return;
  } finally {
    button.disabled = false;
    form.removeAttribute("aria-busy");
  }
  // A reload or the way back from the card page shows this payment, not a new form.
  history.replaceState(history.state, "", `/pay.html?payment=${payment.id}`);
  params.set("payment", payment.id);
  if (payment.provider === "card" && payment.redirect_url && payment.status === "pending") {
    location.assign(payment.redirect_url);
    return;
  }
  if (payment.status === "pending") showPending(payment);
  else {
    await load();
    render({ focus: true });
  }
  state.focus();
}

form.addEventListener("submit", submit);
form.addEventListener("change", syncProvider);
if (await load()) render();
