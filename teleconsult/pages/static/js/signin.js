// The sign-in page ("/"): sign in, register as a patient of a clinic (from a link with
// ?clinic=<id> or a code typed in), then go to the page of one's role.
import { api, restoreSession, signIn } from "./api.js";
import { applyI18n, loadI18n, t } from "./i18n.js";
import { homeOf } from "./shell.js";
import { clearError, submitting, toast } from "./ui.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function goHome(user) {
  const next = new URLSearchParams(location.search).get("next");
  // Only one of our own pages (or a join link, /join/<room id>), never another site.
  // --- payments follow-ups (issue 15): with its query (pay.html?appointment=<id>), of
  // plain characters only: no "/", "\\", ":" or "#", so never another origin.
  const safe = next && /^\/([a-z][a-z0-9-]*\.html|join\/[A-Za-z0-9_-]{16,64})(\?[A-Za-z0-9._~%=&+-]{0,500})?$/.test(next) ? next : null;
  location.replace(safe || homeOf(user.role));
}

function show(which) {
  for (const id of ["signin-panel", "register-panel"]) document.getElementById(id).hidden = id !== which;
  const first = document.querySelector(`#${which} input`);
  if (first) first.focus();
}

async function main() {
  await loadI18n();
  applyI18n();
  const restored = await restoreSession().catch(() => null);
  if (restored) return goHome(restored.user);

  const params = new URLSearchParams(location.search);
  const clinic = params.get("clinic");
  const form = document.getElementById("signin-form");
  const register = document.getElementById("register-form");
  if (clinic && UUID.test(clinic)) {
    register.elements.clinic.value = clinic;
    show("register-panel");
  }
  document.body.classList.add("ready");

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError(form);
    const user = await submitting(form, () => signIn(form.elements.email.value.trim(), form.elements.password.value)).catch(() => null);
    if (user) goHome(user);
  });
  document.getElementById("show-register").addEventListener("click", () => show("register-panel"));
  document.getElementById("show-signin").addEventListener("click", () => show("signin-panel"));

  register.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError(register);
    const f = register.elements;
    const code = f.clinic.value.trim();
    if (!UUID.test(code)) {
      const message = register.querySelector(".form-error");
      message.textContent = t("register.bad_code");
      message.hidden = false;
      f.clinic.focus();
      return;
    }
    const body = { clinic_id: code, email: f.email.value.trim(), password: f.password.value, full_name: f.full_name.value.trim() };
    if (f.phone.value.trim()) body.phone = f.phone.value.trim();
    const done = await submitting(register, () => api("/api/v1/auth/register", { method: "POST", body, idempotent: true })).then(
      () => true,
      () => false,
    );
    if (!done) return;
    // 202 with no tokens: the new patient signs in with what they chose.
    form.elements.email.value = body.email;
    register.reset();
    show("signin-panel");
    form.elements.password.focus();
    toast(t("register.done"), "ok", { timeoutMs: 0 });
  });
}

main();
