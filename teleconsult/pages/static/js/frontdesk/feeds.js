// Each doctor's calendar-feed link: create (the URL is shown once), copy, revoke.
import { api } from "../api.js";
import { t } from "../i18n.js";
import { copyText, el, errorText, formatDateTime, replace, toast } from "../ui.js";

export function setupFeeds(doctors) {
  const section = document.getElementById("feeds");
  const list = document.getElementById("feed-list");
  section.hidden = false;
  replace(list, doctors.map((d) => doctorFeeds(d)));
}

function doctorFeeds(doctor) {
  const item = el("li", { class: "card", dataset: { doctor: doctor.id } }, el("h3", {}, doctor.full_name));
  const existing = el("ul", { class: "plain" });
  const fresh = el("div");
  const create = el("button", { type: "button", "aria-label": t("desk.feed_create_label", { doctor: doctor.full_name }) }, t("desk.feed_create"));
  create.addEventListener("click", async () => {
    create.disabled = true;
    try {
      const feed = await api(`/api/v1/doctors/${doctor.id}/calendar-feeds`, { method: "POST" });
      const field = el("input", { readonly: true, value: feed.url, "aria-label": t("desk.feed_url", { doctor: doctor.full_name }), class: "feed-url" });
      const copy = el("button", { type: "button" }, t("desk.copy"));
      copy.addEventListener("click", async () => toast((await copyText(feed.url, field)) ? t("desk.link_copied") : t("desk.link_select"), "ok"));
      replace(fresh, el("p", { class: "help" }, t("desk.feed_once")), el("p", { class: "row" }, field, copy));
      await refresh();
    } catch (err) {
      toast(errorText(err), "error");
    } finally {
      create.disabled = false;
    }
  });
  async function refresh() {
    try {
      const feeds = (await api(`/api/v1/doctors/${doctor.id}/calendar-feeds`)).items.filter((f) => !f.revoked_at);
      replace(
        existing,
        feeds.map((f) => {
          const revoke = el("button", { type: "button", class: "danger" }, t("desk.feed_revoke"));
          revoke.addEventListener("click", async () => {
            try {
              await api(`/api/v1/doctors/${doctor.id}/calendar-feeds/${f.id}`, { method: "DELETE" });
              await refresh();
            } catch (err) {
              toast(errorText(err), "error");
            }
          });
          return el("li", {}, t("desk.feed_since", { when: formatDateTime(f.created_at) }), " ", revoke);
        }),
      );
    } catch (err) {
      replace(existing, el("li", { class: "form-error" }, errorText(err)));
    }
  }
  refresh();
  item.append(existing, el("p", {}, create), fresh);
  return item;
}
