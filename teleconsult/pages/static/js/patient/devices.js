// "My devices": the chat devices registered for this account, each revocable.
import { api } from "../api.js";
import { t } from "../i18n.js";
import { el, errorText, formatDateTime, replace, toast } from "../ui.js";

export async function loadDevices() {
  const list = document.getElementById("device-list");
  let devices;
  try {
    devices = (await api("/api/v1/devices")).items;
  } catch (err) {
    replace(list, el("li", { class: "form-error" }, errorText(err)));
    return;
  }
  document.getElementById("devices-empty").hidden = devices.length > 0;
  replace(
    list,
    devices.map((d) => {
      const name = d.label || t("devices.unnamed");
      const item = el(
        "li",
        { class: "card", dataset: { device: d.id } },
        el("h3", {}, name),
        el("p", { class: "muted" }, t("devices.added", { when: formatDateTime(d.created_at) }), " · ", el("code", {}, d.ed25519_public.slice(0, 8))),
      );
      const remove = el("button", { type: "button", class: "danger", "aria-label": t("devices.revoke_label", { name }) }, t("devices.revoke"));
      remove.addEventListener("click", async () => {
        remove.disabled = true;
        try {
          await api(`/api/v1/devices/${d.id}`, { method: "DELETE" });
          toast(t("devices.revoked", { name }), "ok");
          await loadDevices();
          document.getElementById("devices-title").focus();
        } catch (err) {
          remove.disabled = false;
          toast(errorText(err), "error");
        }
      });
      item.append(el("p", {}, remove));
      return item;
    }),
  );
}
