"""Fake gateway clients for the SMS and WeChat template adapters: they record what would have been sent.
Named in ``settings.CUSTODY_ALERT_CHANNELS`` by dotted path, as a deployment names its real client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class FakeSmsClient:
    sent: ClassVar[list[dict[str, Any]]] = []
    failing: ClassVar[bool] = False

    def send_template(self, *, phone: str, template: str, params: Mapping[str, str]) -> str:
        if self.failing:
            raise ConnectionError("短信网关超时 gateway timed out")
        self.sent.append({"phone": phone, "template": template, "params": dict(params)})
        return f"sms-{len(self.sent)}"


class FakeWechatClient:
    sent: ClassVar[list[dict[str, Any]]] = []

    def send_template(self, *, openid: str, template: str, data: Mapping[str, Mapping[str, str]]) -> str:
        self.sent.append(
            {"openid": openid, "template": template, "data": {k: dict(v) for k, v in data.items()}}
        )
        return f"wx-{len(self.sent)}"
