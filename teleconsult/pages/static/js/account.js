// The account page: who is signed in, change password, sign out.
import { api } from "./api.js";
import { t } from "./i18n.js";
import { startPage, homeOf } from "./shell.js";
import { clearError, submitting, toast } from "./ui.js";

const { user } = await startPage();
document.getElementById("me-name").textContent = user.full_name;
document.getElementById("me-email").textContent = user.email;
document.getElementById("back").href = homeOf(user.role);
const form = document.getElementById("password-form");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError(form);
  const f = form.elements;
  if (f.new_password.value !== f.confirm.value) {
    const message = form.querySelector(".form-error");
    message.textContent = t("password.mismatch");
    message.hidden = false;
    f.confirm.focus();
    return;
  }
  const ok = await submitting(form, () =>
    api("/api/v1/me/password", { method: "POST", body: { current_password: f.current_password.value, new_password: f.new_password.value } }),
  ).then(
    () => true,
    () => false,
  );
  if (ok) {
    form.reset();
    toast(t("password.changed"), "ok");
  }
});
