"""Chinese first (简体中文优先): the language is the one the person chose with the switch (Django's language
cookie), else ``LANGUAGE_CODE`` (zh-hans). Django's ``LocaleMiddleware`` would follow the browser's
Accept-Language instead, so an English phone would open the parents' pages in English."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest
from django.middleware.locale import LocaleMiddleware
from django.utils import translation


class ChineseFirstLocaleMiddleware(LocaleMiddleware):
    def process_request(self, request: HttpRequest) -> None:
        chosen = request.COOKIES.get(settings.LANGUAGE_COOKIE_NAME, "")
        supported = {code for code, _ in settings.LANGUAGES}
        language = chosen if chosen in supported else settings.LANGUAGE_CODE
        translation.activate(language)
        request.LANGUAGE_CODE = translation.get_language()
