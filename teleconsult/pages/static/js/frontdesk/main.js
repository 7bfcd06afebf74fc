// The front desk: the day's agenda by doctor, booking for a patient, calendar feeds.
import { api } from "../api.js";
import { startPage } from "../shell.js";
import { errorText, toast } from "../ui.js";
import { setupAgenda } from "./agenda.js";
import { setupDeskBooking } from "./book.js";
import { setupFeeds } from "./feeds.js";

const { user } = await startPage({ roles: ["receptionist", "nurse", "admin"] });
let doctors = [];
try {
  doctors = (await api("/api/v1/doctors")).items;
} catch (err) {
  toast(errorText(err), "error");
}
const agenda = setupAgenda(doctors);
const booking = setupDeskBooking(doctors, { onChanged: () => agenda.reload() });
agenda.onMove((appointment, patient) => booking.startMove(appointment, patient));
await agenda.reload();
// Feeds are the doctor's or an admin's to hand out (the calendar_feed.manage rule).
if (user.role === "admin") setupFeeds(doctors);
