// /join/<room id>: the join link of an appointment (the scheduling API's join_url).
// Sign-in first (startPage sends a visitor to "/" and back here); then the API says,
// to someone who may read it, which appointment the room belongs to, and the room page
// opens. Anyone else (another patient, another clinic) reads "not found", nothing more.
import { api } from "./api.js";
import { t } from "./i18n.js";
import { startPage } from "./shell.js";
import { errorText } from "./ui.js";

async function main() {
  await startPage({});
  const roomId = decodeURIComponent(location.pathname.split("/").pop() || "");
  try {
    const appointment = await api(`/api/v1/rooms/${encodeURIComponent(roomId)}`);
    location.replace(`/room.html?appointment=${encodeURIComponent(appointment.id)}`);
  } catch (err) {
    document.getElementById("join-status").hidden = true;
    const box = document.getElementById("join-error");
    box.textContent = err.code === "not_found" ? t("join.not_found") : errorText(err);
    box.hidden = false;
    document.getElementById("join-title").focus();
  }
}

main();
