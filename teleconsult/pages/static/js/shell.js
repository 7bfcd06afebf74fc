// What every signed-in page does first: strings, the session, the header.
//
//   const { user } = await startPage({ roles: ["patient"] });
import { restoreSession, signOut, onSessionChange } from "./api.js";
import { applyI18n, loadI18n, t } from "./i18n.js";
import { el, replace } from "./ui.js";

/** The page each role lands on after signing in. */
export function homeOf(role) {
  if (role === "patient") return "/patient.html";
  if (role === "doctor") return "/doctor.html";
  return "/frontdesk.html";
}

/** Load strings and the session; send someone not signed in (or in the wrong role) away. */
export async function startPage({ roles } = {}) {
  await loadI18n();
  applyI18n();
  let current = null;
  try {
    current = await restoreSession();
  } catch {
    current = null;
  }
  if (!current) {
    // --- payments follow-ups (issue 15): keep the query (pay.html?appointment=…) ---
    location.replace(`/?next=${encodeURIComponent(location.pathname + location.search)}`);
    return new Promise(() => {}); // the page is going away
  }
  if (roles && !roles.includes(current.user.role)) {
    location.replace(homeOf(current.user.role));
    return new Promise(() => {});
  }
  renderHeader(current.user);
  onSessionChange((s) => {
    if (!s) location.replace("/");
  });
  document.body.classList.add("ready");
  return current;
}

function renderHeader(user) {
  const slot = document.getElementById("account");
  if (!slot) return;
  const out = el("button", { type: "button", class: "link", id: "sign-out", onclick: () => signOut() }, t("nav.signout"));
  replace(slot, el("span", { class: "who" }, user.full_name), el("a", { href: "/account.html" }, t("nav.account")), out);
}
