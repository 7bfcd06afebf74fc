// Patient names for the agenda, fetched once per page (each read is audited server-side).
import { api } from "../api.js";

const known = new Map();

export function remember(patient) {
  known.set(patient.id, Promise.resolve(patient));
}

export function patient(id) {
  if (!known.has(id)) {
    const found = api(`/api/v1/patients/${id}`).catch(() => ({ id, full_name: "—", phone: null }));
    known.set(id, found);
  }
  return known.get(id);
}
