"""The web's forms, and the one place a domain error becomes a form error (``apply_error``).

Forms only parse and bound what a person types (lengths, numbers, dates, yuan with at most two decimals);
every rule of the domain is checked by the service the view calls. When a service refuses, its
``CustodyError.field`` (or ``RuleViolation.field``) names the input at fault, and ``apply_error`` puts the
message beside that field (``field_map`` renames a service's field to the form's, e.g. a student's
``id_number``); an error that names no field of the form goes on top of the form.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _
from moneyed import Money

from custody.errors import CustodyError
from custody.models import (
    AlertState,
    ClassSizeBand,
    ClosureMode,
    ReleaseCadence,
    TeachingMode,
    TrainingCategory,
)
from custody.services.lessons import MAX_LESSON_HOURS
from custody.web.templatetags import label
from ledger.money import cny
from reconciliation.errors import ReconciliationError

MAX_YUAN = Decimal("100000000000")  # far above any cap; keeps amounts inside the ledger's bigint range


def apply_error(
    form: forms.Form, error: CustodyError | ReconciliationError, *, field_map: Mapping[str, str] | None = None
) -> None:
    """Show ``error`` beside the field it names (after ``field_map``), else above the form, in the page's
    language (the services' messages are bilingual, "须填写备注 a note is required")."""
    field = getattr(error, "field", None) or str(error.details.get("field") or "")
    field = (field_map or {}).get(field, field)
    target = field if field in form.fields else None
    message = label(error.message)
    form.add_error(target, ValidationError(message, code=getattr(error, "code", "custody_error")))


def _labels(choices: list[tuple[str, str]]) -> Any:
    """A model's bilingual choice labels, shown in the page's language (chosen when the form is built)."""

    def localised() -> list[tuple[str, str]]:
        return [(value, label(text)) for value, text in choices]

    return localised


class WebForm(forms.Form):
    """Labels without Django's trailing colon (the pages put each label above its field)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


def _text(label: Any, *, max_length: int, required: bool = True, **kwargs: Any) -> forms.CharField:
    return forms.CharField(label=label, max_length=max_length, required=required, **kwargs)


class YuanField(forms.DecimalField):
    """An amount in yuan (元), at most two decimals, returned as ``Money`` in CNY."""

    def __init__(self, *, min_yuan: str = "0.01", **kwargs: Any) -> None:
        kwargs.setdefault("widget", forms.NumberInput(attrs={"step": "0.01", "inputmode": "decimal"}))
        super().__init__(
            max_digits=14, decimal_places=2, min_value=Decimal(min_yuan), max_value=MAX_YUAN, **kwargs
        )

    def clean(self, value: Any) -> Money | None:
        amount = super().clean(value)
        return None if amount is None else cny(amount)


class DateInput(forms.DateInput):
    """An HTML date input: its value is always ISO (yyyy-mm-dd), whatever the page's locale formats say."""

    input_type = "date"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="%Y-%m-%d", **kwargs)


class DateTimeInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="%Y-%m-%dT%H:%M", **kwargs)


# --- sign-in ----------------------------------------------------------------------------------------------


class LoginForm(WebForm):
    username = _text(_("用户名"), max_length=150, widget=forms.TextInput(attrs={"autocomplete": "username"}))
    password = forms.CharField(
        label=_("密码"),
        max_length=128,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )
    otp_token = forms.RegexField(
        label=_("动态口令（监管人员必填）"),
        regex=r"^[0-9]{6,8}$",
        required=False,
        error_messages={"invalid": _("动态口令为6至8位数字。")},
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
    )


# --- parents ----------------------------------------------------------------------------------------------


class DisputeForm(WebForm):
    reason = _text(
        _("异议理由"),
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text=_("例如：孩子当天请假，未上课。"),
    )


class RefundClaimForm(WebForm):
    note = _text(
        _("退费说明（可选）"), max_length=500, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )
    confirm = forms.BooleanField(label=_("我确认申请退还未消费的课时费"))
    key = forms.RegexField(regex=r"^[0-9a-f]{32}$", widget=forms.HiddenInput)


# --- institutions -----------------------------------------------------------------------------------------


class CourseForm(WebForm):
    name = _text(_("课程名称"), max_length=200)
    subject = _text(_("科目"), max_length=50, help_text=_("如：数学、英语、美术"))
    category = forms.ChoiceField(label=_("培训类别"), choices=_labels(TrainingCategory.choices))
    class_size_band = forms.ChoiceField(label=_("班型"), choices=_labels(ClassSizeBand.choices))
    mode = forms.ChoiceField(label=_("授课方式"), choices=_labels(TeachingMode.choices))
    price_per_hour = YuanField(label=_("课时单价（元）"))
    starts_on = forms.DateField(label=_("开课日期"), widget=DateInput(), input_formats=["%Y-%m-%d"])


class EnrolForm(WebForm):
    """Sign up a student (报名): the guardian, the student and the contract, all or nothing."""

    guardian_name = _text(_("家长姓名"), max_length=50)
    guardian_phone = _text(
        _("家长手机号"),
        max_length=20,
        widget=forms.TextInput(attrs={"inputmode": "tel", "autocomplete": "off"}),
    )
    guardian_id_number = _text(_("家长身份证号"), max_length=18, min_length=18)
    student_name = _text(_("学生姓名"), max_length=50)
    student_id_number = _text(_("学生身份证号"), max_length=18, min_length=18)
    grade = _text(_("年级"), max_length=20, required=False)
    course = forms.TypedChoiceField(label=_("课程"), coerce=int, choices=())
    paid_hours = forms.IntegerField(label=_("购买课时"), min_value=1, max_value=10_000)
    gift_hours = forms.IntegerField(label=_("赠送课时"), min_value=0, max_value=10_000, initial=0)
    amount = YuanField(label=_("合同金额（元）"))
    service_starts_on = forms.DateField(
        label=_("服务开始日期"), widget=DateInput(), input_formats=["%Y-%m-%d"]
    )
    service_ends_on = forms.DateField(label=_("服务结束日期"), widget=DateInput(), input_formats=["%Y-%m-%d"])

    def __init__(self, *args: Any, courses: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["course"].choices = courses  # type: ignore[attr-defined]


class ClassLessonsForm(WebForm):
    """Record one class's lesson for the students who attended (one lesson per contract, all or none)."""

    held_at = forms.DateTimeField(
        label=_("上课时间"), widget=DateTimeInput(), input_formats=["%Y-%m-%dT%H:%M"]
    )
    hours = forms.IntegerField(label=_("课时数"), min_value=1, max_value=MAX_LESSON_HOURS, initial=1)
    contracts = forms.TypedMultipleChoiceField(
        label=_("到课学生"), coerce=int, choices=(), widget=forms.CheckboxSelectMultiple
    )
    batch = forms.RegexField(regex=r"^[0-9a-f]{32}$", widget=forms.HiddenInput)

    def __init__(self, *args: Any, contracts: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["contracts"].choices = contracts  # type: ignore[attr-defined]


class RefundAnswerForm(WebForm):
    approve = forms.TypedChoiceField(
        label=_("答复"),
        coerce=lambda value: value == "yes",
        choices=(("yes", _("同意退费")), ("no", _("拒绝"))),
        widget=forms.RadioSelect,
    )
    reason = _text(_("拒绝理由"), max_length=500, required=False, widget=forms.Textarea(attrs={"rows": 2}))


class ResolveDisputeForm(WebForm):
    release = forms.TypedChoiceField(
        label=_("处理结果"),
        coerce=lambda value: value == "release",
        choices=(("release", _("确认已上课，放款")), ("void", _("异议成立，作废该课时"))),
        widget=forms.RadioSelect,
    )
    note = _text(_("处理说明"), max_length=500, widget=forms.Textarea(attrs={"rows": 2}))


# --- regulators -------------------------------------------------------------------------------------------


class ReasonForm(WebForm):
    reason = _text(_("理由"), max_length=500, widget=forms.Textarea(attrs={"rows": 2}))


class ClosureForm(WebForm):
    mode = forms.ChoiceField(
        label=_("停办方式"),
        choices=[
            (ClosureMode.PLANNED, _("计划停办（公告期后退费）")),
            (ClosureMode.ABNORMAL, _("异常停办（立即冻结并退费）")),
        ],
        widget=forms.RadioSelect,
    )
    reason = _text(_("理由"), max_length=500, widget=forms.Textarea(attrs={"rows": 2}))
    confirm = forms.BooleanField(label=_("我确认：机构将被冻结或进入停办，家长的未消费金额将退回"))


class AlertTransitionForm(WebForm):
    to_state = forms.ChoiceField(
        label=_("处理"),
        choices=[
            (AlertState.ACKNOWLEDGED, _("确认预警")),
            (AlertState.INVESTIGATING, _("开始核查")),
            (AlertState.RESOLVED, _("处置完毕")),
        ],
        widget=forms.RadioSelect,
    )
    note = _text(
        _("说明（处置完毕时必填）"), max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )


class BreakActionForm(WebForm):
    action = forms.ChoiceField(
        label=_("操作"),
        choices=(("assign", _("由我处理")), ("comment", _("添加备注")), ("resolve", _("确认无需调账并解决"))),
        widget=forms.RadioSelect,
    )
    note = _text(_("说明"), max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))


class DayForm(WebForm):
    day = forms.DateField(label=_("业务日期"), widget=DateInput(), input_formats=["%Y-%m-%d"])


class ExportForm(WebForm):
    day = forms.DateField(label=_("业务日期"), widget=DateInput(), input_formats=["%Y-%m-%d"])
    institution = forms.TypedChoiceField(label=_("范围"), coerce=int, required=False, empty_value=None)

    def __init__(self, *args: Any, institutions: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["institution"].choices = [("", _("整个辖区")), *institutions]  # type: ignore[attr-defined]


# The policy form: one field per editable item of ``custody.services.policy.EDITABLE_FIELDS``; amounts in
# yuan on the page, fen in the policy.
POLICY_INTEGERS: dict[str, Any] = {
    "max_service_months": _("单次收费最长服务期（月）"),
    "max_paid_hours": _("单次收费最多课时"),
    "earliest_charge_days_before_start": _("最早可在开课前多少天收费"),
    "renewal_max_remaining_hours": _("剩余课时不超过多少时可续费"),
    "unpaid_contract_lapse_days": _("未付款合同自动取消（天）"),
    "guidance_markup_percent": _("学科类价格上浮上限（%）"),
    "lesson_auto_confirm_working_days": _("课时逾期默认确认（工作日）"),
    "refund_answer_working_days": _("机构答复退费期限（工作日）"),
    "refund_payout_before_start_working_days": _("开课前退费到账期限（工作日）"),
    "refund_payout_after_start_working_days": _("开课后退费到账期限（工作日）"),
    "closure_notice_days": _("计划停办公告期（天）"),
    "reserve_ratio_percent": _("风险保证金比例（%）"),
}
POLICY_YUAN: dict[str, Any] = {
    "non_subject_max_charge_fen": _("非学科类单次收费上限（元）"),
    "reserve_minimum_fen": _("风险保证金最低额（元）"),
}
POLICY_BOOLEANS: dict[str, Any] = {
    "anti_splitting": _("禁止拆分合同"),
    "risk_reserve_allowed": _("允许风险保证金方式"),
}


class PolicyForm(WebForm):
    release_cadence = forms.ChoiceField(label=_("拨付周期"), choices=_labels(ReleaseCadence.choices))
    note = _text(_("修改说明"), max_length=500, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args: Any, bands: list[tuple[str, str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, text in POLICY_INTEGERS.items():
            self.fields[name] = forms.IntegerField(label=text, min_value=0, max_value=2_147_483_647)
        for name, text in POLICY_YUAN.items():
            self.fields[name] = YuanField(label=text, min_yuan="0")
        for name, text in POLICY_BOOLEANS.items():
            self.fields[name] = forms.BooleanField(label=text, required=False)
        self.guidance_fields = []
        for band, mode, text in bands:
            name = f"guidance__{band}__{mode}"
            self.fields[name] = YuanField(label=text)
            self.guidance_fields.append(name)
        # Keep the note last on the page.
        self.order_fields([f for f in self.fields if f != "note"] + ["note"])
