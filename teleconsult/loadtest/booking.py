"""The ``booking`` scenario: patients searching a doctor's free slots and booking one.

Set-up, all through the API as the clinic's admin: ``--doctors`` doctors
offering video consultations of ``--slot-minutes``, working every day
00:00-23:59 (clinic time), and ``--users`` patients who register themselves.
Then each patient, ``--rate`` times a second, open loop (``openloop.py``):
picks a doctor and a day within ``--days`` from tomorrow at random, searches
that day's free slots (``GET /api/v1/slots``) and books one of them at random
(``POST /api/v1/appointments``). Both latencies are measured from the
scheduled time. A 409 ``slot_taken`` (someone was quicker, or the patient is
already booked then) is counted as a conflict, not an error: it is the answer
contention should give.

At the end the admin lists each doctor's appointments: every booking that was
answered 201 must be there (``missing``); ones the server holds that were not
answered 201 (a timed-out request that committed) are ``unanswered``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import aiohttp

from teleconsult.client.rest import ApiError
from teleconsult.loadtest import LoadtestError
from teleconsult.loadtest.accounts import Accounts, Member, admin_credentials
from teleconsult.loadtest.common import Common, CpuMeter, Outcome, new_run_id, started_at
from teleconsult.loadtest.openloop import Lag, Schedule, run_user
from teleconsult.loadtest.report import Recorder, errors_text, latency_table, show_progress

logger = logging.getLogger(__name__)

LATENCIES = {"search": "slot search", "search_and_book": "slot search + booking"}
PROGRESS = ("searched", "booked", "conflicts")
SERVICE = "video"


@dataclass(frozen=True)
class BookingOptions:
    doctors: int = 5
    days: int = 28
    slot_minutes: int = 30
    request_timeout: float = 30.0


def _day(offset: int) -> datetime:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=offset)


class BookingRun:
    """One run of the booking scenario; ``run`` returns its outcome. Not reusable."""

    def __init__(self, common: Common, options: BookingOptions) -> None:
        if options.doctors < 1 or not 1 <= options.days <= 365:
            raise LoadtestError("--doctors must be at least 1 and --days between 1 and 365")
        if not 5 <= options.slot_minutes <= 480:
            raise LoadtestError("--slot-minutes must be between 5 and 480")
        self.common, self.options = common, options
        self.run_id = new_run_id()
        self.rng = common.rng()
        self.recorder = Recorder(list(LATENCIES), ["scheduled", "attempted", *PROGRESS, "no_slot"])
        self.lag = Lag()
        self.doctors: list[UUID] = []
        self.patients: list[Member] = []
        self.booked: dict[UUID, set[UUID]] = {}  # doctor -> appointment ids answered 201
        self.first_day = _day(1)

    async def _setup(self, accounts: Accounts) -> None:
        doctors = await accounts.staff(self.options.doctors, "doctor", sign_in=False)
        self.doctors = [d.user_id for d in doctors]
        admin = accounts.admin

        async def bookable(i: int) -> None:
            doctor = self.doctors[i]
            profile = {
                "specialties": ["load test"],
                "languages": ["en"],
                "consultation_minutes": self.options.slot_minutes,
                "services": [SERVICE],
            }
            await admin.call("PUT", f"/api/v1/doctors/{doctor}/profile", profile)
            for weekday in range(7):
                rule = {"weekday": weekday, "start_time": "00:00", "end_time": "23:59"}
                await admin.call("POST", f"/api/v1/doctors/{doctor}/availability/rules", rule)

        try:
            await accounts.bounded("setting doctors' hours", len(self.doctors), bookable)
        except ApiError as exc:
            raise LoadtestError(f"could not set a doctor's profile or hours: {exc}") from None
        self.patients = await accounts.patients(self.common.users)
        self.booked = {d: set() for d in self.doctors}

    def _patient(self, patient: Member) -> Callable[[int, float], Awaitable[None]]:
        loop = asyncio.get_running_loop()
        rest = patient.rest
        rec = self.recorder
        timeout = self.options.request_timeout

        async def act(k: int, scheduled: float) -> None:
            rec.count("attempted")
            doctor = self.rng.choice(self.doctors)
            start = self.first_day + timedelta(days=self.rng.randrange(self.options.days))
            query = urlencode(
                {
                    "doctor": str(doctor),
                    "from": start.isoformat(),
                    "to": (start + timedelta(days=1)).isoformat(),
                    "service": SERVICE,
                }
            )
            try:
                async with asyncio.timeout(timeout):
                    found = await rest.call("GET", f"/api/v1/slots?{query}")
                rec.record("search", loop.time() - scheduled)
                rec.count("searched")
                if not found["items"]:
                    rec.count("no_slot")
                    return
                slot = self.rng.choice(found["items"])
                body = {
                    "doctor_id": str(doctor),
                    "service": SERVICE,
                    "starts_at": slot["starts_at"],
                }
                try:
                    async with asyncio.timeout(timeout):
                        made = await rest.call("POST", "/api/v1/appointments", body)
                except ApiError as exc:
                    if exc.code != "slot_taken":
                        raise
                    rec.record("search_and_book", loop.time() - scheduled)
                    rec.count("conflicts")
                    return
                rec.record("search_and_book", loop.time() - scheduled)
                rec.count("booked")
                self.booked[doctor].add(UUID(made["id"]))
            except ApiError as exc:
                rec.error(exc.code, str(exc))
            except TimeoutError:
                rec.error("timeout", f"no answer within {timeout:g} s")
            except (aiohttp.ClientError, OSError) as exc:
                rec.error(type(exc).__name__, str(exc))
            except Exception as exc:  # counted, and the patient goes on with its schedule
                logger.exception("a load-test booking failed unexpectedly")
                rec.error(type(exc).__name__, str(exc))

        return act

    async def run(self) -> Outcome:
        common = self.common
        accounts = Accounts(
            common.url, run_id=self.run_id, concurrency=common.setup_concurrency, quiet=common.quiet
        )
        began = started_at()
        loop = asyncio.get_running_loop()
        try:
            await accounts.sign_in_admin(
                *admin_credentials(common.admin_email, common.admin_password, common.credentials)
            )
            setup_began = loop.time()
            await self._setup(accounts)
            setup_seconds = loop.time() - setup_began
            t0, cpu, wall = await self._measure()
            check = await self._check(accounts)
        finally:
            try:
                if not common.keep_accounts:
                    await accounts.disable_all()
            finally:
                await accounts.close()
        return self._outcome(began, setup_seconds, t0, cpu, wall, check)

    async def _measure(self) -> tuple[float, float, float]:
        common = self.common
        loop = asyncio.get_running_loop()
        schedule = Schedule(loop.time() + 0.5, common.rate, common.duration)
        phases = [schedule.phase(self.rng) for _ in self.patients]
        self.recorder.count("scheduled", sum(schedule.count(p) for p in phases))
        cpu = CpuMeter()
        ticker = asyncio.create_task(
            show_progress(self.recorder, schedule.t0, PROGRESS, LATENCIES, quiet=common.quiet)
        )
        users = [
            asyncio.create_task(run_user(schedule, phase, self._patient(patient), self.lag))
            for patient, phase in zip(self.patients, phases, strict=True)
        ]
        try:
            hard_stop = schedule.t0 + common.duration + common.drain
            await asyncio.wait(users, timeout=max(0.0, hard_stop - loop.time()))
        finally:
            for task in users:
                task.cancel()
            await asyncio.gather(*users, return_exceptions=True)
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        return schedule.t0, cpu.share(), loop.time() - schedule.t0

    async def _check(self, accounts: Accounts) -> dict[str, int]:
        """Every 201 is on the server's books; count what is there unanswered."""
        admin = await accounts.fresh_admin()
        end = self.first_day + timedelta(days=self.options.days + 1)
        missing = unanswered = listed = 0
        for doctor in self.doctors:
            held: set[UUID] = set()
            cursor: str | None = None
            while True:
                params = {
                    "doctor": str(doctor),
                    "from": self.first_day.isoformat(),
                    "to": end.isoformat(),
                    "limit": "200",
                }
                if cursor:
                    params["cursor"] = cursor
                page: dict[str, Any] = await admin.call(
                    "GET", f"/api/v1/appointments?{urlencode(params)}"
                )
                held.update(UUID(a["id"]) for a in page["items"])
                cursor = page.get("next_cursor")
                if not cursor:
                    break
            listed += len(held)
            missing += len(self.booked[doctor] - held)
            unanswered += len(held - self.booked[doctor])
        return {"listed": listed, "missing": missing, "unanswered": unanswered}

    def _outcome(
        self,
        began: str,
        setup_seconds: float,
        t0: float,
        cpu: float,
        wall: float,
        check: dict[str, int],
    ) -> Outcome:
        common, options, rec = self.common, self.options, self.recorder
        counts = rec.counts
        attempted = counts["attempted"]
        bookings = {
            "scheduled": counts["scheduled"],
            "attempted": attempted,
            "unsent": max(0, counts["scheduled"] - attempted),
            "searched": counts["searched"],
            "no_slot": counts["no_slot"],
            "booked": counts["booked"],
            "conflicts": counts["conflicts"],
            **check,
        }
        errors = dict(rec.errors)
        failures = []
        if check["missing"]:
            failures.append(f"{check['missing']} bookings answered 201 are not on the books")
        if bookings["unsent"]:
            failures.append(f"{bookings['unsent']} scheduled bookings were never attempted")
        if errors:
            failures.append(f"{sum(errors.values())} errors")
        latencies = rec.latencies()
        window = max(common.duration, 1e-9)
        throughput = {
            "offered": round(common.users * common.rate, 3),
            "searched": round(counts["searched"] / window, 3),
            "booked": round(counts["booked"] / window, 3),
        }
        report: dict[str, Any] = {
            "scenario": "booking",
            "run_id": self.run_id,
            "started_at": began,
            "url": common.url,
            "params": {
                "users": common.users,
                "rate_per_user": common.rate,
                "duration_s": common.duration,
                "doctors": options.doctors,
                "days": options.days,
                "slot_minutes": options.slot_minutes,
                "drain_s": common.drain,
                "request_timeout_s": options.request_timeout,
            },
            "setup": {"seconds": round(setup_seconds, 3)},
            "bookings": bookings,
            "latency_ms": latencies,
            "throughput_per_s": throughput,
            "errors": errors,
            "error_samples": rec.error_samples,
            "generator": {
                "cpu_share_of_a_core": round(cpu, 3),
                "max_start_lag_ms": round(self.lag.worst * 1e3, 3),
                "started_late": self.lag.behind,
                "wall_s": round(wall, 3),
            },
            "timeline": rec.timeline,
            "hdr_histograms": rec.histograms(),
            "passed": not failures,
            "failures": failures,
        }
        lines = [
            f"teleconsult loadtest booking: {common.users} patients, {options.doctors} doctors, "
            f"{common.rate:g} bookings/s each for {common.duration:g} s (run {self.run_id})",
            f"bookings: scheduled {bookings['scheduled']}, searched {bookings['searched']}, "
            f"booked {bookings['booked']}, conflicts {bookings['conflicts']}, "
            f"no free slot {bookings['no_slot']}; on the books {check['listed']} "
            f"(missing {check['missing']}, unanswered {check['unanswered']})",
            f"throughput: offered {throughput['offered']:g}/s, searched "
            f"{throughput['searched']:g}/s, booked {throughput['booked']:g}/s",
            latency_table(latencies, LATENCIES),
            errors_text(errors, rec.error_samples),
            f"generator: {cpu:.0%} of a core; started up to {self.lag.worst * 1e3:.1f} ms late "
            f"({self.lag.behind} more than 10 ms); set-up {setup_seconds:.1f} s",
        ]
        return Outcome(
            report=report,
            summary="\n".join(lines),
            failures=failures,
            plot_title=lines[0],
            plot_latencies=dict(LATENCIES),
            plot_rates={"searched": "searched/s", "booked": "booked/s"},
        )


async def run(common: Common, options: BookingOptions) -> Outcome:
    return await BookingRun(common, options).run()
