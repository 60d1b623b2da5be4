"""``custody.services.institutions``: registration opens the chart's two accounts; the one state machine;
the risk-reserve mode only where the jurisdiction allows it."""

from __future__ import annotations

from datetime import datetime
from itertools import product
from zoneinfo import ZoneInfo

import pytest

from custody.errors import IllegalTransition, RuleViolation
from custody.models import Institution, InstitutionState, Jurisdiction, SupervisionMode
from custody.services.institutions import (
    INSTITUTION_TRANSITIONS,
    freeze_institution,
    transition_institution,
    unfreeze_institution,
)
from custody.services.policy import publish_policy
from ledger import clock
from ledger.models import Account, AccountType
from tests.custody.conftest import InstitutionFactory

pytestmark = pytest.mark.django_db


def test_register_institution_opens_custody_cash_and_payable(institution: Institution) -> None:
    assert institution.state == InstitutionState.ACTIVE
    assert institution.whitelisted
    assert institution.supervision_mode == SupervisionMode.CUSTODY
    cash = Account.objects.get(code=f"custody_cash:i{institution.pk}")
    payable = Account.objects.get(code=f"payable:i{institution.pk}")
    assert institution.cash_account == cash and institution.payable_account == payable
    assert (cash.type, cash.currency, cash.credits_must_not_exceed_debits) == (AccountType.ASSET, "CNY", True)
    assert (payable.type, payable.debits_must_not_exceed_credits) == (AccountType.LIABILITY, True)
    stored = Institution.objects.get(pk=institution.pk)
    assert (stored.cash_account_id, stored.payable_account_id) == (cash.pk, payable.pk)


def test_risk_reserve_mode_only_where_the_policy_allows_it(
    make_institution: InstitutionFactory, jurisdiction: Jurisdiction
) -> None:
    with pytest.raises(RuleViolation) as refused:
        make_institution(supervision_mode=SupervisionMode.RISK_RESERVE)
    assert (refused.value.rule, refused.value.field) == ("risk_reserve_not_allowed", "supervision_mode")
    assert refused.value.details["policy_version"] == 1
    assert not Institution.objects.exists()
    publish_policy(
        jurisdiction=jurisdiction, changes={"risk_reserve_allowed": True}, changed_by=None, note=""
    )
    reserve = make_institution(supervision_mode=SupervisionMode.RISK_RESERVE)
    assert reserve.supervision_mode == SupervisionMode.RISK_RESERVE


@pytest.mark.parametrize(
    ("overrides", "rule", "field"),
    [
        ({"category": "tutoring"}, "institution_category", "category"),
        ({"supervision_mode": "escrow"}, "supervision_mode", "supervision_mode"),
        ({"name": "  "}, "required", "name"),
        ({"custody_account_number": ""}, "required", "custody_account_number"),
        (
            {"custody_account_number": "6222000011112222", "settlement_account_number": "6222000011112222"},
            "separate_accounts",
            "settlement_account_number",
        ),
    ],
)
def test_register_institution_refuses_bad_input(
    make_institution: InstitutionFactory, overrides: dict[str, str], rule: str, field: str
) -> None:
    with pytest.raises(RuleViolation) as refused:
        make_institution(**overrides)
    assert (refused.value.rule, refused.value.field) == (rule, field)
    assert not Account.objects.filter(code__startswith="custody_cash:").exists()


ALL_STATES = list(InstitutionState)


@pytest.mark.parametrize(("current", "target"), list(product(ALL_STATES, ALL_STATES)))
def test_institution_transitions_follow_the_table(
    institution: Institution, current: InstitutionState, target: InstitutionState
) -> None:
    Institution.objects.filter(pk=institution.pk).update(state=current)
    institution.refresh_from_db()
    moment = datetime(2026, 11, 23, 9, tzinfo=ZoneInfo("Asia/Shanghai"))
    if target in INSTITUTION_TRANSITIONS[current]:
        with clock.frozen_at(moment):
            transition_institution(institution=institution, to_state=target, reason="监管决定 regulator")
        assert institution.state == target
        stored = Institution.objects.get(pk=institution.pk)
        assert (stored.state, stored.state_changed_at, stored.state_reason) == (
            target,
            moment,
            "监管决定 regulator",
        )
    else:
        with pytest.raises(IllegalTransition) as caught:
            transition_institution(institution=institution, to_state=target, reason="监管决定 regulator")
        assert caught.value.details == {"entity": "institution", "current": current, "target": target}
        assert Institution.objects.get(pk=institution.pk).state == current


def test_the_table_has_the_agreed_shape() -> None:
    table = dict(INSTITUTION_TRANSITIONS)
    assert table == {
        "active": {"frozen", "closing"},
        "frozen": {"active", "closing"},
        "closing": {"closed"},
        "closed": set(),
    }


def test_freeze_and_unfreeze(institution: Institution) -> None:
    freeze_institution(institution=institution, reason="余额低于预警线 balance below the alert line")
    assert Institution.objects.get(pk=institution.pk).state == InstitutionState.FROZEN
    with pytest.raises(IllegalTransition):
        freeze_institution(institution=institution, reason="again")
    unfreeze_institution(institution=institution, reason="已整改 fixed")
    stored = Institution.objects.get(pk=institution.pk)
    assert (stored.state, stored.state_reason) == (InstitutionState.ACTIVE, "已整改 fixed")
    with pytest.raises(IllegalTransition):
        unfreeze_institution(institution=institution, reason="again")


def test_a_transition_needs_a_reason(institution: Institution) -> None:
    with pytest.raises(RuleViolation) as refused:
        freeze_institution(institution=institution, reason=" ")
    assert (refused.value.rule, refused.value.field) == ("reason_required", "reason")
    assert Institution.objects.get(pk=institution.pk).state == InstitutionState.ACTIVE


def test_a_stale_instance_is_checked_against_the_stored_state(institution: Institution) -> None:
    stale = Institution.objects.get(pk=institution.pk)
    freeze_institution(institution=institution, reason="冻结 frozen")
    with pytest.raises(IllegalTransition):
        freeze_institution(institution=stale, reason="冻结 frozen")
