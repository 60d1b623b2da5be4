"""Training institutions (培训机构): registration with their ledger accounts, and their state machine.

Registering opens the institution's two accounts of the chart: ``custody_cash:i{pk}`` (asset, the supervised
account at the custody bank, never negative) and ``payable:i{pk}`` (liability, released money owed to the
institution, never negative). ``transition_institution`` is the only place the state machine lives:

    active ⇄ frozen        (regulator freezes and unfreezes)
    active | frozen → closing → closed
"""

from __future__ import annotations

from collections.abc import Mapping

from django.db import transaction

from custody.errors import IllegalTransition, RuleViolation
from custody.models import Institution, InstitutionState, Jurisdiction, SupervisionMode, TrainingCategory
from custody.selectors.policy import current_policy
from ledger import clock
from ledger.models import AccountType
from ledger.services import open_account

INSTITUTION_TRANSITIONS: Mapping[str, frozenset[str]] = {
    InstitutionState.ACTIVE: frozenset({InstitutionState.FROZEN, InstitutionState.CLOSING}),
    InstitutionState.FROZEN: frozenset({InstitutionState.ACTIVE, InstitutionState.CLOSING}),
    InstitutionState.CLOSING: frozenset({InstitutionState.CLOSED}),
    InstitutionState.CLOSED: frozenset(),
}


def cash_account_code(institution: Institution) -> str:
    return f"custody_cash:i{institution.pk}"


def payable_account_code(institution: Institution) -> str:
    return f"payable:i{institution.pk}"


def register_institution(
    *,
    jurisdiction: Jurisdiction,
    name: str,
    licence_number: str,
    category: str,
    supervision_mode: str = SupervisionMode.CUSTODY,
    custody_bank_name: str,
    custody_account_number: str,
    settlement_account_number: str,
    whitelisted: bool = True,
) -> Institution:
    """A licensed institution (办学许可证) with its supervised account (预收费资金专用账户)."""
    if category not in TrainingCategory.values:
        raise RuleViolation(
            "institution_category",
            f"未知的培训类别 {category} unknown training category {category!r}",
            field="category",
        )
    if supervision_mode not in SupervisionMode.values:
        raise RuleViolation(
            "supervision_mode",
            f"未知的监管方式 {supervision_mode} unknown supervision mode {supervision_mode!r}",
            field="supervision_mode",
        )
    for field, value in (
        ("name", name),
        ("licence_number", licence_number),
        ("custody_bank_name", custody_bank_name),
        ("custody_account_number", custody_account_number),
        ("settlement_account_number", settlement_account_number),
    ):
        if not value.strip():
            raise RuleViolation("required", f"{field} 不能为空 {field} is required", field=field)
    if custody_account_number.strip() == settlement_account_number.strip():
        # The supervised account must be kept apart from the institution's own money (分账).
        raise RuleViolation(
            "separate_accounts",
            "监管专用账户不能与机构结算账户相同 the custody account must differ from the settlement account",
            field="settlement_account_number",
        )
    with transaction.atomic():
        policy = current_policy(jurisdiction)
        if supervision_mode == SupervisionMode.RISK_RESERVE and not policy.risk_reserve_allowed:
            raise RuleViolation(
                "risk_reserve_not_allowed",
                f"{jurisdiction.name}不允许风险保证金方式，须银行托管 "
                f"{jurisdiction.code} does not allow the risk-reserve mode; use bank custody",
                field="supervision_mode",
                policy_version=policy.version,
            )
        institution = Institution.objects.create(
            jurisdiction=jurisdiction,
            name=name.strip(),
            licence_number=licence_number.strip(),
            category=category,
            supervision_mode=supervision_mode,
            custody_bank_name=custody_bank_name.strip(),
            custody_account_number=custody_account_number.strip(),
            settlement_account_number=settlement_account_number.strip(),
            whitelisted=whitelisted,
            state=InstitutionState.ACTIVE,
            state_changed_at=clock.now(),
        )
        institution.cash_account = open_account(
            code=cash_account_code(institution),
            type=AccountType.ASSET,
            limit="credits_must_not_exceed_debits",
            name=f"{institution.name} 监管专用账户 custody cash",
        )
        institution.payable_account = open_account(
            code=payable_account_code(institution),
            type=AccountType.LIABILITY,
            limit="debits_must_not_exceed_credits",
            name=f"{institution.name} 应付机构 payable to the institution",
        )
        institution.save(update_fields=["cash_account", "payable_account"])
    return institution


def transition_institution(
    *, institution: Institution, to_state: InstitutionState, reason: str
) -> Institution:
    """Move the institution to ``to_state`` or raise ``IllegalTransition``; the row is locked while checked.

    ``institution`` is updated in place and returned.
    """
    if not reason.strip():
        raise RuleViolation("reason_required", "须说明理由 a reason is required", field="reason")
    target = InstitutionState(to_state)
    with transaction.atomic():
        locked = Institution.objects.select_for_update().get(pk=institution.pk)
        if target not in INSTITUTION_TRANSITIONS[locked.state]:
            raise IllegalTransition("institution", locked.state, target)
        locked.state = target
        locked.state_changed_at = clock.now()
        locked.state_reason = reason.strip()[:500]
        locked.save(update_fields=["state", "state_changed_at", "state_reason"])
    institution.state = locked.state
    institution.state_changed_at = locked.state_changed_at
    institution.state_reason = locked.state_reason
    return institution


def freeze_institution(*, institution: Institution, reason: str) -> Institution:
    """冻结: no new contracts, lessons or payouts until unfrozen (or closed)."""
    return transition_institution(institution=institution, to_state=InstitutionState.FROZEN, reason=reason)


def unfreeze_institution(*, institution: Institution, reason: str) -> Institution:
    return transition_institution(institution=institution, to_state=InstitutionState.ACTIVE, reason=reason)
