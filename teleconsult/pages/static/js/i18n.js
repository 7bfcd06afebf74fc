// One string catalogue per language (static/i18n/<lang>.json, flat keys such as
// "signin.title"); the language follows the browser's preferences (French or English).
//
//   await loadI18n(); applyI18n(); el.textContent = t("patient.booked", { when });
//
// In HTML: data-i18n (text), data-i18n-placeholder, data-i18n-aria-label, data-i18n-title.

export const LANGUAGES = ["en", "fr"];
let lang = "en";
let strings = {};

/** The first of the browser's languages we have, else English. */
export function pickLanguage(preferred = navigator.languages || [navigator.language]) {
  for (const tag of preferred) {
    const base = String(tag || "").toLowerCase().split("-")[0];
    if (LANGUAGES.includes(base)) return base;
  }
  return "en";
}

export function language() {
  return lang;
}

/** Fetch the catalogue of the browser's language (a few KB, cached for ever per build). */
export async function loadI18n(wanted = pickLanguage()) {
  lang = LANGUAGES.includes(wanted) ? wanted : "en";
  const url = new URL(`../i18n/${lang}.json`, import.meta.url);
  for (let attempt = 0; ; attempt++) {
    try {
      const resp = await fetch(url, { credentials: "same-origin" });
      if (!resp.ok) throw new Error(`catalogue ${resp.status}`);
      strings = await resp.json();
      break;
    } catch (err) {
      if (attempt >= 3) throw err;
      await new Promise((r) => setTimeout(r, 500 * 2 ** attempt));
    }
  }
  document.documentElement.lang = lang;
  return lang;
}

/** The string for key with {name} placeholders filled from vars; the key itself if missing. */
export function t(key, vars = {}) {
  const text = Object.prototype.hasOwnProperty.call(strings, key) ? strings[key] : key;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
}

/** Fill every data-i18n* attribute under root. */
export function applyI18n(root = document) {
  for (const node of root.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of root.querySelectorAll("[data-i18n-placeholder]")) node.placeholder = t(node.dataset.i18nPlaceholder);
  for (const node of root.querySelectorAll("[data-i18n-aria-label]")) node.setAttribute("aria-label", t(node.dataset.i18nAriaLabel));
  for (const node of root.querySelectorAll("[data-i18n-title]")) node.title = t(node.dataset.i18nTitle);
  const title = document.querySelector("title[data-i18n]");
  if (title) document.title = t(title.dataset.i18n);
}
