// The patient's page: appointments (join, move, cancel), booking, devices.
import { startPage } from "../shell.js";
import { loadAppointments } from "./appointments.js";
import { setupBooking } from "./booking.js";
import { loadDevices } from "./devices.js";

const { user } = await startPage({ roles: ["patient"] });
const booking = await setupBooking(user, { onBooked: () => loadAppointments(booking) });
await loadAppointments(booking);
await loadDevices();
