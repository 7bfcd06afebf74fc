// Money on the payment pages: amounts are whole numbers in the currency's minor unit
// (XOF 1500 is 1,500 francs; KES 150000 is 1,500.00 shillings), shown with Intl.
// Every POST that moves money carries an Idempotency-Key chosen once per intent and
// reused when the same tap is sent again, so a retry on 2G never pays twice.
import { api } from "../api.js";
import { language, t } from "../i18n.js";

function locale() {
  return language() === "fr" ? "fr-FR" : "en-GB";
}

// ISO 4217 minor units, as the server has them (payments/money.py EXPONENTS; a test
// compares the two). Intl's own digits (CLDR) differ for some (TZS), so they are only
// the fallback for a currency missing here.
const EXPONENTS = {
  XOF: 0, XAF: 0, RWF: 0, UGX: 0, GNF: 0, KMF: 0, JPY: 0, KRW: 0,
  KES: 2, GHS: 2, NGN: 2, USD: 2, EUR: 2, GBP: 2, TZS: 2, ZAR: 2, ZMW: 2, MAD: 2, EGP: 2,
  ETB: 2, CDF: 2, MWK: 2, SLE: 2, LRD: 2, CHF: 2, CAD: 2,
  TND: 3, KWD: 3, BHD: 3, JOD: 3, OMR: 3, LYD: 3,
};

/** Digits after the decimal point of a currency (ISO 4217 minor unit): XOF 0, KES 2. */
export function minorDigits(currency) {
  if (Object.prototype.hasOwnProperty.call(EXPONENTS, currency)) return EXPONENTS[currency];
  try {
    return new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions().maximumFractionDigits;
  } catch {
    return 2;
  }
}

/** "1 500 F CFA", "KES 1,500.00": an integer amount in minor units, never a float sum. */
export function formatMoney(amount, currency) {
  const digits = minorDigits(currency);
  const negative = amount < 0;
  const whole = Math.abs(amount);
  const scale = 10 ** digits;
  // Whole and fraction parts apart, so no float rounding creeps into what is shown.
  const value = Number(`${Math.floor(whole / scale)}.${String(whole % scale).padStart(digits, "0")}`);
  const text = new Intl.NumberFormat(locale(), { style: "currency", currency, minimumFractionDigits: digits, maximumFractionDigits: digits }).format(value);
  return negative ? `−${text}` : text;
}

/** A minor-unit integer from what a person typed ("1500", "1 500,50", "1,500.5"); null if not a amount. */
export function parseMoney(text, currency) {
  const digits = minorDigits(currency);
  const cleaned = String(text).trim().replace(/[\s\u00a0\u202f']/g, "");
  const m = cleaned.match(/^(\d{1,3}(?:[.,]\d{3})*|\d+)(?:[.,](\d+))?$/);
  if (!m) return null;
  let whole = m[1];
  let fraction = m[2] || "";
  // "1,500" with a 2-digit currency is 1500 (thousands), "1,50" is 1.50.
  if (fraction.length === 3 && digits !== 3 && !/[.,]/.test(whole)) {
    whole += fraction;
    fraction = "";
  }
  whole = whole.replace(/[.,]/g, "");
  if (fraction.length > digits) return null;
  const amount = Number(whole) * 10 ** digits + Number(fraction.padEnd(digits, "0") || 0);
  return Number.isSafeInteger(amount) && amount > 0 ? amount : null;
}

function randomKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/**
 * One Idempotency-Key per intent (what is paid, how, from which number). The same intent
 * sent again reuses its key; a new intent (another number, or trying again after a
 * payment failed) takes a new one with fresh(). Kept in the history entry's state, so a
 * reload of the page while the answer was lost still sends the same key.
 */
export class Intents {
  constructor(scope) {
    this.scope = scope;
    this.keys = new Map(Object.entries(history.state?.[scope] || {}));
  }

  key(intent) {
    if (!this.keys.has(intent)) {
      this.keys.set(intent, randomKey());
      this.save();
    }
    return this.keys.get(intent);
  }

  fresh(intent) {
    this.keys.delete(intent);
    this.save();
  }

  clear() {
    this.keys.clear();
    this.save();
  }

  save() {
    history.replaceState({ ...(history.state || {}), [this.scope]: Object.fromEntries(this.keys) }, "");
  }
}

/** POST money with its key; retried by api() on no answer (replaying it is harmless). */
export function postMoney(path, key, body) {
  return api(path, { method: "POST", body, idempotent: true, retries: 2, headers: { "Idempotency-Key": key } });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Ask for a payment until it is final: 1 s, then ×1.5 up to 10 s between questions,
 * with jitter. onTick(payment) after each answer. A lost answer is asked again.
 * Resolves with the final payment; stop() ends it early (resolves null).
 */
export function pollPayment(paymentId, onTick) {
  let stopped = false;
  const done = (async () => {
    let wait = 1000;
    for (;;) {
      await sleep(wait / 2 + Math.random() * (wait / 2));
      if (stopped) return null;
      try {
        const payment = await api(`/api/v1/payments/${encodeURIComponent(paymentId)}`, { retries: 1 });
        if (stopped) return null;
        onTick?.(payment);
        if (payment.status !== "pending") return payment;
      } catch (err) {
        if (err.status && err.status < 500 && err.status !== 429) throw err;
      }
      wait = Math.min(10000, wait * 1.5);
    }
  })();
  return { done, stop: () => (stopped = true) };
}

/** What a failed payment's reason means, in words a patient understands. */
export function failureText(reason) {
  const known = ["cancelled_by_user", "timeout", "expired", "insufficient_funds", "declined"];
  // MTN MoMo's reasons come through as MTN spells them.
  const aliases = { approval_rejected: "cancelled_by_user", not_enough_funds: "insufficient_funds", payer_limit_reached: "declined", rejected: "declined" };
  const key = String(reason || "").toLowerCase();
  const found = aliases[key] || key;
  return t(known.includes(found) ? `pay.failed_${found}` : "pay.failed_other");
}

/** "paid", "open" … in the page's language. */
export function invoiceStatusText(status) {
  return t(`pay.invoice_${status}`);
}
