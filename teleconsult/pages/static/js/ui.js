// Small DOM helpers shared by every page: el(), a polite status region, dates in the
// user's language, form helpers that never lose what a person typed.
import { language, t } from "./i18n.js";

/** el("button", {class: "primary", onclick: fn, dataset: {id}}, "text", child…) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Remove every child of node, then append children. */
export function replace(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

function statusRegion() {
  let region = document.getElementById("status");
  if (!region) {
    region = el("div", { id: "status", class: "status", role: "status", "aria-live": "polite" });
    document.body.append(region);
  }
  return region;
}

/** Say something in the page's live region (read out by screen readers). kind: info|ok|error */
export function toast(message, kind = "info", { timeoutMs = 6000 } = {}) {
  const region = statusRegion();
  const item = el("p", { class: `toast toast-${kind}` }, message);
  region.append(item);
  if (timeoutMs) setTimeout(() => item.remove(), timeoutMs);
  return item;
}

/** A user-facing message for an ApiError (or any error). */
export function errorText(err) {
  if (!err) return t("error.generic");
  if (err.code === "network" || err.code === "timeout") return t("error.network");
  const key = `error.${err.code}`;
  const known = t(key);
  return known !== key ? known : err.detail || t("error.generic");
}

function locale() {
  return language() === "fr" ? "fr-FR" : "en-GB";
}

export function formatDate(value, opts = { weekday: "short", day: "numeric", month: "short" }) {
  return new Intl.DateTimeFormat(locale(), opts).format(new Date(value));
}

export function formatTime(value) {
  return new Intl.DateTimeFormat(locale(), { hour: "2-digit", minute: "2-digit" }).format(new Date(value));
}

export function formatDateTime(value) {
  return new Intl.DateTimeFormat(locale(), { weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" }).format(new Date(value));
}

/** yyyy-mm-dd of a Date in the browser's time zone. */
export function isoDay(date = new Date()) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

/** Mark a form busy while fn runs; on failure, keep every field as typed and say why. */
export async function submitting(form, fn) {
  const buttons = form.querySelectorAll("button");
  form.setAttribute("aria-busy", "true");
  buttons.forEach((b) => (b.disabled = true));
  try {
    const result = await fn();
    form.classList.remove("unsent");
    return result;
  } catch (err) {
    form.classList.add("unsent"); // the input stays; the person can send again
    const message = form.querySelector(".form-error");
    if (message) {
      message.textContent = errorText(err);
      message.hidden = false;
    } else {
      toast(errorText(err), "error");
    }
    throw err;
  } finally {
    form.removeAttribute("aria-busy");
    buttons.forEach((b) => (b.disabled = false));
  }
}

/** Clear a form's error line. */
export function clearError(form) {
  const message = form.querySelector(".form-error");
  if (message) {
    message.textContent = "";
    message.hidden = true;
  }
}

/** Copy text to the clipboard, falling back to selecting it in a field. */
export async function copyText(text, field) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    if (field) {
      field.value = text;
      field.hidden = false;
      field.select();
    }
    return false;
  }
}
