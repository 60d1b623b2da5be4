"""How risk alerts reach people: one ``Notifier`` interface, three adapters.

- ``InboxNotifier`` writes an ``InboxMessage`` (站内信) into the regulators' inbox of the alert's
  jurisdiction. It is always on.
- ``SmsNotifier`` sends an SMS template message (短信模板) and ``WechatTemplateNotifier`` a WeChat Official
  Account template message (微信模板消息) through a *client* given to them: any object with the small
  ``SmsClient`` / ``WechatTemplateClient`` method. This project ships no real gateway client (Aliyun SMS,
  Tencent Cloud SMS, the WeChat ``message/template/send`` API need credentials and network access we do not
  have); tests pass fakes, and a deployment names its own client class in settings::

      CUSTODY_ALERT_CHANNELS = {
          "sms": {"client": "myproject.sms.AliyunClient", "template": "SMS_123456",
                  "recipients": {"310104": ["13800000000"]}},        # jurisdiction code -> phones
          "wechat": {"client": "myproject.wx.TemplateClient", "template": "tmpl-id",
                     "recipients": {"310104": ["o-openid"]}},         # jurisdiction code -> openids
      }

Messages carry no personal data: the institution's name, the rule, the level and the figures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from django.conf import settings
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)

# SMS template variables are short (about 20 characters for most Chinese gateways).
SMS_VARIABLE_LIMIT = 20


class NotificationUnavailable(Exception):
    """The channel cannot send: no client configured, or the gateway refused."""


@dataclass(frozen=True)
class AlertNotice:
    """What every channel needs to say about one alert, already rendered as plain values."""

    alert_id: int
    jurisdiction_id: int
    jurisdiction_code: str
    institution_id: int
    institution_name: str
    rule: str
    rule_label: str
    level: str
    level_label: str
    window: str
    value: int
    threshold: int
    unit: str
    message: str
    raised_at: datetime
    escalated: bool

    @property
    def subject(self) -> str:
        verb = "升级为" if self.escalated else ""
        return f"【{verb}{self.level_label}】{self.institution_name}：{self.rule_label}"[:200]

    @property
    def body(self) -> str:
        return (
            f"{self.message}\n"
            f"机构 institution: {self.institution_name} (#{self.institution_id})\n"
            f"规则 rule: {self.rule_label}\n"
            f"数值 value: {_figure(self.value, self.unit)}；"
            f"阈值 threshold: {_figure(self.threshold, self.unit)}\n"
            f"期间 window: {self.window}\n"
            f"预警编号 alert: {self.alert_id}（请在监管端确认、核查并填写处置说明 "
            "acknowledge, investigate and resolve it with a note in the regulator's workspace）"
        )


def _figure(value: int, unit: str) -> str:
    if unit == "fen":
        sign = "-" if value < 0 else ""
        return f"{sign}{abs(value) // 100:,}.{abs(value) % 100:02d} 元 yuan"
    return {"count": f"{value} 笔/件 items", "days": f"{value} 天 days", "percent": f"{value}%"}.get(
        unit, str(value)
    )


class Notifier(Protocol):
    """One channel. ``send`` raises on failure; the caller records it and retries on the next scan. A
    channel whose ``send`` writes to the database sets ``transactional = True``."""

    name: str

    def send(self, notice: AlertNotice) -> int:
        """Deliver ``notice``; return how many recipients it went to."""
        ...


class InboxNotifier:
    """站内信 into the jurisdiction's regulators' inbox."""

    name = "inbox"
    transactional = True  # it writes to the database: sent and recorded in one transaction

    def send(self, notice: AlertNotice) -> int:
        from custody.models import InboxMessage
        from ledger import clock

        InboxMessage.objects.create(
            jurisdiction_id=notice.jurisdiction_id,
            alert_id=notice.alert_id,
            subject=notice.subject,
            body=notice.body,
            created_at=clock.now(),
        )
        return 1


class SmsClient(Protocol):
    def send_template(self, *, phone: str, template: str, params: Mapping[str, str]) -> str:
        """Send one templated SMS; return the gateway's message id, raise on refusal."""
        ...


class WechatTemplateClient(Protocol):
    def send_template(self, *, openid: str, template: str, data: Mapping[str, Mapping[str, str]]) -> str:
        """Send one template message (``data``: ``{"keyword1": {"value": …}}``); return its message id."""
        ...


Recipients = Callable[[AlertNotice], Sequence[str]]


class SmsNotifier:
    """短信模板: one SMS per recipient, with short template variables."""

    name = "sms"

    def __init__(self, *, client: SmsClient, template: str, recipients: Recipients) -> None:
        self.client = client
        self.template = template
        self.recipients = recipients

    def params(self, notice: AlertNotice) -> dict[str, str]:
        return {
            "level": notice.level_label.split(" ")[0],
            "institution": notice.institution_name[:SMS_VARIABLE_LIMIT],
            "rule": notice.rule_label.split(" ")[0][:SMS_VARIABLE_LIMIT],
            "alert": str(notice.alert_id),
        }

    def send(self, notice: AlertNotice) -> int:
        phones = list(self.recipients(notice))
        params = self.params(notice)
        for phone in phones:
            self.client.send_template(phone=phone, template=self.template, params=params)
        return len(phones)


class WechatTemplateNotifier:
    """微信模板消息: one template message per recipient's openid."""

    name = "wechat"

    def __init__(self, *, client: WechatTemplateClient, template: str, recipients: Recipients) -> None:
        self.client = client
        self.template = template
        self.recipients = recipients

    def data(self, notice: AlertNotice) -> dict[str, dict[str, str]]:
        return {
            "first": {"value": notice.subject},
            "keyword1": {"value": notice.institution_name},
            "keyword2": {"value": notice.rule_label},
            "keyword3": {
                "value": f"{_figure(notice.value, notice.unit)} / {_figure(notice.threshold, notice.unit)}"
            },
            "keyword4": {"value": notice.raised_at.isoformat(timespec="minutes")},
            "remark": {"value": f"预警编号 {notice.alert_id}，请及时处置"},
        }

    def send(self, notice: AlertNotice) -> int:
        openids = list(self.recipients(notice))
        data = self.data(notice)
        for openid in openids:
            self.client.send_template(openid=openid, template=self.template, data=data)
        return len(openids)


def recipients_by_jurisdiction(table: Mapping[str, Sequence[str]]) -> Recipients:
    """Recipients from a table of jurisdiction code -> addresses (phones, openids)."""

    def lookup(notice: AlertNotice) -> Sequence[str]:
        return list(table.get(notice.jurisdiction_code, ()))

    return lookup


def _client(config: Mapping[str, Any], channel: str) -> Any:
    path = config.get("client")
    if not path:
        raise NotificationUnavailable(f"未配置{channel}客户端 no client configured for the {channel} channel")
    return import_string(path)()


def configured_notifiers() -> list[Notifier]:
    """The inbox, plus the SMS and WeChat channels ``settings.CUSTODY_ALERT_CHANNELS`` configures."""
    notifiers: list[Notifier] = [InboxNotifier()]
    channels: Mapping[str, Mapping[str, Any]] = getattr(settings, "CUSTODY_ALERT_CHANNELS", {}) or {}
    builders: dict[str, type[SmsNotifier] | type[WechatTemplateNotifier]] = {
        "sms": SmsNotifier,
        "wechat": WechatTemplateNotifier,
    }
    for name, config in channels.items():
        builder = builders.get(name)
        if builder is None:
            raise NotificationUnavailable(f"未知的通知渠道 unknown notification channel {name!r}")
        notifiers.append(
            builder(
                client=_client(config, name),
                template=str(config.get("template", "")),
                recipients=recipients_by_jurisdiction(config.get("recipients", {})),
            )
        )
    return notifiers
