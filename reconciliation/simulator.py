"""A custody bank simulator (托管银行模拟器), for tests, demos and benchmarks.

It plays the bank behind the institutions' supervised accounts and drives the real services: it answers
instructed payouts and refunds (``custody.services.payouts.record_payout_result``), settles channel payments
into custody (``custody.services.payments.settle_payments``, T+1), takes parents' bank transfers as signed
callbacks (``receive_callback`` with the bank's key), keeps its own book of every account, and writes one
statement per account and day in any format (``reconciliation.formats`` writers).

Faults are explicit parameters of a day (``Fault``), applied to the bank's book, not to the ledger:

=====================  ===============================================================================
``missing_line``       the bank never books a movement the ledger has (its balance leaves it out)
``duplicate_line``     the bank books a movement twice (a second line, a new serial)
``late_settlement``    the bank books a movement on the next day
``amount_off``         the bank books a movement one fen (or ``amount_fen``) off
``bank_fee``           the bank takes a charge (账户管理费) nobody instructed
``unknown_reference``  money arrives quoting a contract number that does not exist
``out_of_sequence``    the day's statement is delivered after the next day's
=====================  ===============================================================================

Everything is deterministic for a seed: serials, the bookings a fault picks when none is named, the
unknown references. A simulated day runs in seconds of real time, so the simulator records the day's window
on the ledger's clock as a ``DayCut``; tie-outs then read the ledger at the simulated day's close.

    simulator = CustodyBankSimulator(institutions=[school], seed=7, bank_key=key, key_id="bank-1")
    with simulator.day(date(2024, 3, 4), faults=[Fault(FaultKind.BANK_FEE)]):
        simulator.receive_transfer(contract, payer_account="6222…")
        run_release_payouts()                 # the platform instructs; the bank executes at the day's end
    files = simulator.deliveries(fmt="camt053")
"""

from __future__ import annotations

import base64
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from enum import StrEnum

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody.channels.bank import bank_callback_body, sign_bank_callback
from custody.models import Contract, Institution, Payment, PayoutInstruction, PayoutKind, PayoutState
from custody.services.payments import receive_callback, settle_payments
from custody.services.payouts import record_payout_result
from ledger import clock
from reconciliation.formats import (
    Statement,
    StatementLine,
    write_camt053,
    write_csv,
    write_mt940,
    write_xlsx,
)
from reconciliation.selectors.days import SHANGHAI, ledger_clock_now
from reconciliation.services.days import record_day_cut

BANK_CHANNEL = "bank"
# What a channel's settlement line shows as its counterparty.
CHANNEL_COUNTERPARTIES = {
    "wechat": ("财付通支付科技有限公司", "243300133"),
    "alipay": ("支付宝（中国）网络技术有限公司", "1209010500001231"),
    "unionpay": ("银联商务股份有限公司", "310066632018170085866"),
}
CHANNEL_CODES = {"wechat": "WX", "alipay": "ZF", "unionpay": "YL"}
WRITERS = {"csv": write_csv, "xlsx": write_xlsx, "camt053": write_camt053, "mt940": write_mt940}
EXTENSIONS = {"csv": "csv", "xlsx": "xlsx", "camt053": "xml", "mt940": "sta"}


class SimulatorError(Exception):
    pass


class FaultKind(StrEnum):
    MISSING_LINE = "missing_line"
    DUPLICATE_LINE = "duplicate_line"
    LATE_SETTLEMENT = "late_settlement"
    AMOUNT_OFF = "amount_off"
    BANK_FEE = "bank_fee"
    UNKNOWN_REFERENCE = "unknown_reference"
    OUT_OF_SEQUENCE = "out_of_sequence"


# Faults that change one of the day's bookings (the rest add a booking, or change the delivery).
TARGETED = frozenset(
    {FaultKind.MISSING_LINE, FaultKind.DUPLICATE_LINE, FaultKind.LATE_SETTLEMENT, FaultKind.AMOUNT_OFF}
)


@dataclass(frozen=True)
class Fault:
    """One fault on one day. ``institution`` (a pk) defaults to the first simulated institution;
    ``target`` names the booking to change (a payout reference, a payment's transaction id) and defaults to
    one picked by the seeded generator among the day's single bookings; ``amount_fen`` is the fee, the
    unknown credit, or how far off the amount is (default 1 fen)."""

    kind: FaultKind
    institution: int | None = None
    target: str = ""
    amount_fen: int = 0


@dataclass
class Booking:
    """One movement the bank books on an account."""

    institution_id: int
    amount_fen: int
    reference: str
    counterparty_name: str
    counterparty_account: str
    summary: str
    key: str  # what it books: a transaction id, a payout reference, a batch id; a fault's target
    source: str  # payment, settlement, payout, refund, batch, fee, unknown
    serial: str = ""  # assigned when the day closes (a bank-channel payment keeps its transaction id)
    batch: bool = False
    late: bool = False  # carried from the day before (a late_settlement fault)


@dataclass(frozen=True)
class AppliedFault:
    """What a fault did: the booking it changed (``target``), the line that shows it (``serial``: the repeat,
    the fee, the unknown credit, the changed line; "" for a missing line), and on which day."""

    kind: FaultKind
    institution_id: int
    day: date
    target: str
    serial: str
    amount_fen: int


@dataclass(frozen=True)
class Delivery:
    institution_id: int
    day: date
    filename: str
    data: bytes


@dataclass
class _Account:
    institution_id: int
    number: str
    balance_fen: int = 0
    sequence: int = 0
    statements: dict[date, Statement] = field(default_factory=dict)


class CustodyBankSimulator:
    def __init__(
        self,
        *,
        institutions: Sequence[Institution],
        seed: int = 0,
        bank_key: Ed25519PrivateKey | None = None,
        key_id: str = "",
        batch_refunds: bool = False,
        batch_channel_settlements: bool = True,
        split_over_fen: int | None = None,
        opening_balances: dict[int, int] | None = None,
    ) -> None:
        if not institutions:
            raise SimulatorError("the simulator needs at least one institution")
        self.random = random.Random(seed)
        self.bank_key = bank_key
        self.key_id = key_id
        self.batch_refunds = batch_refunds
        self.batch_channel_settlements = batch_channel_settlements
        self.split_over_fen = split_over_fen
        self.institution_ids = [i.pk for i in institutions]
        self.accounts = {
            i.pk: _Account(i.pk, i.custody_account_number, balance_fen=(opening_balances or {}).get(i.pk, 0))
            for i in institutions
        }
        self.applied: list[AppliedFault] = []
        self.out_of_sequence: set[tuple[int, date]] = set()
        self._serial = 0
        self._transfers = 0
        # Bank-channel payments settled before the book opens are in its opening balances, not new credits.
        self._booked_payments: set[int] = set(
            Payment.objects.filter(
                contract__institution_id__in=self.institution_ids,
                channel=BANK_CHANNEL,
                settlement_entry__isnull=False,
            ).values_list("pk", flat=True)
        )
        self._carried: list[Booking] = []  # booked late: on the next day
        self._today: date | None = None
        self._bookings: list[Booking] = []
        self._faults: list[Fault] = []

    # --- the day ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def day(
        self, day: date, *, faults: Sequence[Fault] = (), execute: bool = True, settle_channels: bool = True
    ) -> Iterator[CustodyBankSimulator]:
        """Business time is ``day`` 09:00 in Shanghai inside the block. When it ends the bank executes the
        instructions still open (``execute``), settles the channels' payments of earlier days
        (``settle_channels``), books what moved, applies ``faults``, closes its books for the day and writes
        the day's statements; the day's window on the ledger's clock is recorded as its ``DayCut``."""
        if self._today is not None:
            raise SimulatorError("a simulated day is already open")
        opens_at = _tick(ledger_clock_now())
        self._today = day
        self._bookings = []
        self._faults = list(faults)
        try:
            with clock.frozen_at(datetime(day.year, day.month, day.day, 9, 0, tzinfo=SHANGHAI)):
                yield self
                self._book_bank_payments()
                if execute:
                    self.execute_instructions()
                if settle_channels:
                    self.settle_channels()
            self._close(day, self._faults)
            record_day_cut(day=day, opens_at=opens_at, closes_at=_tick(ledger_clock_now()), note="simulator")
        finally:
            self._today = None

    def fault(self, fault: Fault) -> None:
        """Add a fault to the open day (after seeing what the day booked, say)."""
        self._require_day()
        self._faults.append(fault)

    def bookings_today(self) -> list[Booking]:
        """What the bank has booked so far today (late bookings from yesterday included), in order."""
        self._require_day()
        return self._carried + self._bookings

    def _require_day(self) -> date:
        if self._today is None:
            raise SimulatorError("open a simulated day first: with simulator.day(date): …")
        return self._today

    # --- what the bank does ------------------------------------------------------------------------------

    def receive_transfer(
        self, contract: Contract, *, payer_account: str, transaction_id: str = ""
    ) -> Payment:
        """A parent's transfer into the supervised account quoting the contract number: the bank signs a
        callback to the platform (the custody bank's channel), which confirms and settles it at once."""
        day = self._require_day()
        if self.bank_key is None:
            raise SimulatorError("receiving transfers needs the bank's signing key")
        self._transfers += 1
        txn = transaction_id or f"BK{day:%y%m%d}{self._transfers:08d}"
        body = bank_callback_body(
            transaction_id=txn,
            order_reference=contract.number,
            amount_fen=contract.amount_fen,
            paid_at=clock.now(),
            payer_account=payer_account,
        )
        headers = sign_bank_callback(self.bank_key, self.key_id, body, clock.now())
        return receive_callback(channel=BANK_CHANNEL, headers=headers, body=body, source_ip="127.0.0.1")

    def execute_instructions(
        self, *, fail: Sequence[str] = (), only: Collection[int] | None = None
    ) -> list[PayoutInstruction]:
        """Answer every open instruction of the simulated institutions (or those of them whose ids are in
        ``only``): executed and booked, or (the references in ``fail``) refused, which voids its hold."""
        day = self._require_day()
        self._book_bank_payments()  # what came in before, first: the book keeps the order things happened in
        open_ones = PayoutInstruction.objects.filter(
            institution_id__in=self.institution_ids, state=PayoutState.INSTRUCTED
        )
        if only is not None:
            open_ones = open_ones.filter(pk__in=only)
        batches: dict[int, list[PayoutInstruction]] = defaultdict(list)
        executed = []
        for payout in list(open_ones.order_by("pk")):
            if payout.reference in fail:
                record_payout_result(
                    reference=payout.reference,
                    executed=False,
                    reason="收款账户状态异常 the account is closed",
                )
                continue
            record_payout_result(reference=payout.reference, executed=True, bank_reference=f"SIM{payout.pk}")
            executed.append(payout)
            if payout.kind == PayoutKind.REFUND and self.batch_refunds:
                batches[payout.institution_id].append(payout)
            else:
                self._book_payout(payout)
        for institution_id, batch in sorted(batches.items()):
            self._bookings.append(
                Booking(
                    institution_id=institution_id,
                    amount_fen=-sum(p.amount_fen for p in batch),
                    reference=f"PB{day:%Y%m%d}{institution_id:06d}",
                    counterparty_name="",
                    counterparty_account="",
                    summary=f"批量代付退费 {len(batch)}笔",
                    key=f"batch:{institution_id}:{day.isoformat()}",
                    source="batch",
                    batch=True,
                )
            )
        return executed

    def _book_payout(self, payout: PayoutInstruction) -> None:
        institution = Institution.objects.get(pk=payout.institution_id)
        release = payout.kind == PayoutKind.RELEASE
        parts = _split(payout.amount_fen, self.split_over_fen)
        for n, part in enumerate(parts, start=1):
            label = f"拨付机构 {payout.reference}" if release else f"退费 {payout.reference}"
            if len(parts) > 1:
                label += f" 第{n}笔共{len(parts)}笔"
            self._bookings.append(
                Booking(
                    institution_id=payout.institution_id,
                    amount_fen=-part,
                    reference=payout.reference,
                    counterparty_name=institution.name if release else "退费收款人",
                    counterparty_account=payout.destination_account,
                    summary=label,
                    key=payout.reference,
                    source="payout" if release else "refund",
                )
            )

    def settle_channels(self) -> list[Payment]:
        """The channels' settlements (WeChat Pay, Alipay: T+1) arrive: payments confirmed before today are
        settled into custody and booked, one line per channel and institution (or one per payment)."""
        day = self._require_day()
        self._book_bank_payments()
        start_of_day = datetime(day.year, day.month, day.day, tzinfo=SHANGHAI)
        due = list(
            Payment.objects.filter(
                contract__institution_id__in=self.institution_ids,
                settlement_entry__isnull=True,
                paid_at__lt=start_of_day,
            )
            .exclude(channel=BANK_CHANNEL)
            .select_related("contract")
            .order_by("pk")
        )
        by_channel: dict[str, list[Payment]] = defaultdict(list)
        for payment in due:
            by_channel[payment.channel].append(payment)
        for channel, payments in sorted(by_channel.items()):
            settle_payments(channel=channel, transaction_ids=[p.transaction_id for p in payments])
            name, account = CHANNEL_COUNTERPARTIES.get(channel, (channel, ""))
            by_institution: dict[int, list[Payment]] = defaultdict(list)
            for payment in payments:
                self._booked_payments.add(payment.pk)
                by_institution[payment.contract.institution_id].append(payment)
            for institution_id, group in sorted(by_institution.items()):
                if self.batch_channel_settlements:
                    self._bookings.append(
                        Booking(
                            institution_id=institution_id,
                            amount_fen=sum(p.amount_fen for p in group),
                            reference=f"{CHANNEL_CODES.get(channel, 'QD')}{day:%Y%m%d}{institution_id:06d}",
                            counterparty_name=name,
                            counterparty_account=account,
                            summary=f"{channel} 结算 {len(group)}笔",
                            key=f"{channel}:{institution_id}:{day.isoformat()}",
                            source="settlement",
                            batch=True,
                        )
                    )
                    continue
                for payment in group:
                    self._bookings.append(
                        Booking(
                            institution_id=institution_id,
                            amount_fen=payment.amount_fen,
                            reference=payment.contract.number,
                            counterparty_name=name,
                            counterparty_account=account,
                            summary=f"{channel} 结算 {payment.contract.number}",
                            key=payment.transaction_id,
                            source="settlement",
                        )
                    )
        return due

    def _book_bank_payments(self) -> None:
        """Credits that came through the bank's own channel: booked when the bank sent the callback, under
        the transaction id the platform recorded as the serial."""
        new = list(
            Payment.objects.filter(
                contract__institution_id__in=self.institution_ids,
                channel=BANK_CHANNEL,
                settlement_entry__isnull=False,
            )
            .exclude(pk__in=self._booked_payments)
            .select_related("contract__guardian")
            .order_by("pk")
        )
        for payment in new:
            self._booked_payments.add(payment.pk)
            self._bookings.append(
                Booking(
                    institution_id=payment.contract.institution_id,
                    amount_fen=payment.amount_fen,
                    reference=payment.contract.number,
                    counterparty_name=payment.contract.guardian.name,
                    counterparty_account=payment.payer_account,
                    summary=f"学费 {payment.contract.number}",
                    key=payment.transaction_id,
                    source="payment",
                    serial=payment.transaction_id,
                )
            )

    # --- closing the day ---------------------------------------------------------------------------------

    def _close(self, day: date, faults: Sequence[Fault]) -> None:
        bookings = self._carried + self._bookings
        self._carried, self._bookings = [], []
        changed: set[int] = set()  # ids of bookings a fault has changed already
        shown: list[tuple[FaultKind, int, str, Booking | None, int]] = []
        for fault in faults:
            institution_id = fault.institution or self.institution_ids[0]
            if institution_id not in self.accounts:
                raise SimulatorError(f"institution {institution_id} is not simulated")
            if fault.kind == FaultKind.OUT_OF_SEQUENCE:
                self.out_of_sequence.add((institution_id, day))
                shown.append((fault.kind, institution_id, "", None, 0))
            elif fault.kind == FaultKind.BANK_FEE:
                fee = Booking(
                    institution_id,
                    -(fault.amount_fen or 1_000),
                    "",
                    "托管银行",
                    "",
                    "账户管理费",
                    "fee",
                    "fee",
                )
                bookings.append(fee)
                shown.append((fault.kind, institution_id, "fee", fee, fee.amount_fen))
            elif fault.kind == FaultKind.UNKNOWN_REFERENCE:
                reference = self._unknown_contract_number(day)
                amount = fault.amount_fen or self.random.randrange(10_000, 500_000)
                account = f"62220{self.random.randrange(10**13, 10**14)}"
                credit = Booking(
                    institution_id,
                    amount,
                    reference,
                    "王某某",
                    account,
                    f"学费 {reference}",
                    reference,
                    "unknown",
                )
                bookings.append(credit)
                shown.append((fault.kind, institution_id, reference, credit, amount))
            else:
                target = self._pick(bookings, fault, institution_id, changed)
                parts = [
                    b
                    for b in bookings
                    if b.key == target.key and b.source == target.source and id(b) not in changed
                ]
                changed.update(id(b) for b in parts)
                if fault.kind == FaultKind.MISSING_LINE:
                    bookings = [b for b in bookings if id(b) not in {id(p) for p in parts}]
                    shown.append(
                        (fault.kind, institution_id, target.key, None, sum(p.amount_fen for p in parts))
                    )
                elif fault.kind == FaultKind.LATE_SETTLEMENT:
                    bookings = [b for b in bookings if id(b) not in {id(p) for p in parts}]
                    for part in parts:
                        part.late = True
                    self._carried.extend(parts)
                    shown.append(
                        (fault.kind, institution_id, target.key, None, sum(p.amount_fen for p in parts))
                    )
                elif fault.kind == FaultKind.DUPLICATE_LINE:
                    repeat = replace(target, serial="")
                    changed.add(id(repeat))  # no later fault picks the repeat
                    bookings.append(repeat)
                    shown.append((fault.kind, institution_id, target.key, repeat, repeat.amount_fen))
                elif fault.kind == FaultKind.AMOUNT_OFF:
                    off = fault.amount_fen or 1
                    target.amount_fen += off
                    shown.append((fault.kind, institution_id, target.key, target, off))
        for booking in bookings:
            if not booking.serial:  # a bank-channel credit keeps its transaction id
                booking.serial = self._next_serial(day)
        self._write_statements(day, bookings)
        self.applied.extend(
            AppliedFault(kind, institution_id, day, target, booking.serial if booking else "", amount)
            for kind, institution_id, target, booking, amount in shown
        )

    def _pick(
        self, bookings: Sequence[Booking], fault: Fault, institution_id: int, changed: set[int]
    ) -> Booking:
        candidates = [
            b
            for b in bookings
            if b.institution_id == institution_id and id(b) not in changed and b.amount_fen != 0
        ]
        if fault.target:
            for booking in candidates:
                if booking.key == fault.target:
                    return booking
            raise SimulatorError(
                f"no booking {fault.target!r} of institution {institution_id} today to fault"
            )
        eligible = [
            b
            for b in candidates
            if not b.batch and not b.late and b.source in ("payment", "settlement", "payout", "refund")
        ]
        if not eligible:
            raise SimulatorError(f"institution {institution_id} has no booking left today for {fault.kind}")
        return self.random.choice(eligible)

    def _write_statements(self, day: date, bookings: Sequence[Booking]) -> None:
        by_institution: dict[int, list[Booking]] = defaultdict(list)
        for booking in bookings:
            by_institution[booking.institution_id].append(booking)
        for institution_id, account in self.accounts.items():
            account.sequence += 1
            opening = balance = account.balance_fen
            lines = []
            for n, booking in enumerate(by_institution.get(institution_id, []), start=1):
                balance += booking.amount_fen
                lines.append(
                    StatementLine(
                        line_number=n,
                        serial=booking.serial,
                        booked_on=day,
                        value_on=day,
                        amount_fen=booking.amount_fen,
                        balance_after_fen=balance,
                        counterparty_name=booking.counterparty_name,
                        counterparty_account=booking.counterparty_account,
                        reference=booking.reference,
                        summary=booking.summary,
                    )
                )
            account.balance_fen = balance
            account.statements[day] = Statement(
                account_number=account.number,
                currency="CNY",
                statement_id=f"{day:%Y%m%d}-{account.sequence:04d}",
                sequence=account.sequence,
                period_start=day,
                period_end=day,
                opening_balance_fen=opening,
                closing_balance_fen=balance,
                lines=tuple(lines),
            )

    def _unknown_contract_number(self, day: date) -> str:
        while True:
            number = f"HT{day:%Y%m%d}{self.random.randrange(10**7, 10**8)}"
            if not Contract.objects.filter(number=number).exists():
                return number

    def _next_serial(self, day: date) -> str:
        self._serial += 1
        return f"{day:%Y%m%d}{self._serial:06d}"

    # --- statements --------------------------------------------------------------------------------------

    def balance(self, institution: Institution | int) -> int:
        """The bank's balance of the institution's account now, in fen."""
        return self.accounts[institution if isinstance(institution, int) else institution.pk].balance_fen

    def statement(self, institution: Institution | int, day: date) -> Statement:
        account = self.accounts[institution if isinstance(institution, int) else institution.pk]
        try:
            return account.statements[day]
        except KeyError:
            raise SimulatorError(f"no statement of {account.number} for {day}") from None

    def statement_file(self, institution: Institution | int, day: date, *, fmt: str = "csv") -> bytes:
        if fmt not in WRITERS:
            raise SimulatorError(f"unknown format {fmt!r}; one of {', '.join(WRITERS)}")
        return WRITERS[fmt](self.statement(institution, day))

    def deliveries(self, *, fmt: str = "csv") -> list[Delivery]:
        """Every statement as the bank delivers it, day by day, account by account, except that a statement
        marked out of sequence comes right after the same account's next one (the next day's statement,
        wherever that one itself arrives: two marked days in a row arrive last first)."""
        order = sorted(
            ((day, institution_id) for institution_id, a in self.accounts.items() for day in a.statements),
        )
        following: dict[tuple[date, int], tuple[date, int]] = {}
        for institution_id in self.accounts:
            days = [item for item in order if item[1] == institution_id]
            following.update(zip(days, days[1:], strict=False))
        # Latest first, so that each marked statement is placed after its successor's final position.
        for item in sorted(order, reverse=True):
            day, institution_id = item
            if (institution_id, day) not in self.out_of_sequence or item not in following:
                continue
            order.remove(item)
            order.insert(order.index(following[item]) + 1, item)
        return [
            Delivery(
                institution_id,
                day,
                f"{self.accounts[institution_id].number}_{day:%Y%m%d}.{EXTENSIONS[fmt]}",
                self.statement_file(institution_id, day, fmt=fmt),
            )
            for day, institution_id in order
        ]


def _split(amount_fen: int, limit: int | None) -> list[int]:
    """A transfer above the bank's per-transfer limit (单笔限额) goes out in parts."""
    if limit is None or amount_fen <= limit:
        return [amount_fen]
    parts = [limit] * (amount_fen // limit)
    if amount_fen % limit:
        parts.append(amount_fen % limit)
    return parts


def _tick(moment: datetime) -> datetime:
    """``moment``, once the ledger's clock has moved past it: what is posted from now on comes after it."""
    while ledger_clock_now() <= moment:
        time.sleep(0.0005)
    return moment


def bank_key_for_settings(key: Ed25519PrivateKey) -> str:
    """The public key as ``settings.CUSTODY_CHANNELS["bank"]["keys"]`` takes it."""
    return base64.b64encode(key.public_key().public_bytes_raw()).decode()
