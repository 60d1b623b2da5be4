"""The demo district (示范数据): a realistic, entirely fictional district built only through the services.

``build_demo`` plays about eighty days of a district's life in business time (``ledger.clock``), ending on
``end_date`` (yesterday by default, so nothing lies in the future when the app starts): the regulator sets
the policy, institutions of both categories (学科类 / 非学科类) register in both supervision modes and
publish courses within their caps, parents sign contracts and pay through **signed custody-bank callbacks**
(the dev bank key), lessons are recorded, confirmed by parents or by silence, disputed and resolved, refunds
are claimed, answered, approved by silence and paid back, release payouts are instructed daily and executed
by the bank, one institution closes in a planned way (announced) and one absconds (跑路): it records lessons
nobody attended on its last evenings, the daily risk scan flags the spike, the regulator investigates and
closes it, and it is refunded to completion (the fake lessons voided). In the last week the custody bank also
keeps its own book (``reconciliation.simulator``) and its daily statements are reconciled: every day ties out
except where the bank took a fee or booked an unknown credit, which wait in the break queue.

Every row comes from a service, so the books are exactly what production would write: ``verify_ledger`` passes
and every institution's custody invariant holds (checked at the end). Names, ID numbers (with valid MOD 11-2
check characters), mobile numbers and bank cards (valid Luhn digits) are generated and belong to nobody.
The same ``seed`` gives the same district relative to ``end_date``; with ``end_date`` fixed it is identical.
"""

from __future__ import annotations

import base64
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.contrib.auth.models import User
from django.db.models import Count, Q

from custody.channels import CallbackRejected
from custody.channels.bank import bank_callback_body, sign_bank_callback
from custody.errors import PaymentRejected, RuleViolation
from custody.models import (
    AlertState,
    CallbackLog,
    ClassSizeBand,
    Closure,
    ClosureMode,
    ConfirmedBy,
    Contract,
    ContractState,
    Course,
    Guardian,
    Institution,
    InstitutionState,
    Jurisdiction,
    Lesson,
    LessonState,
    Payment,
    PayoutInstruction,
    PayoutKind,
    PayoutState,
    Refund,
    RefundState,
    RiskAlert,
    Student,
    SupervisionMode,
    TeachingMode,
    TrainingCategory,
)
from custody.rules import latest_service_end
from custody.selectors.balances import contract_position, custody_invariant
from custody.services import (
    alerts,
    calendar,
    closures,
    courses,
    institutions,
    lessons,
    payouts,
    people,
    policy,
    refunds,
    reserve,
)
from custody.services.contracts import cancel_unpaid_contract, lapse_unpaid_contracts, sign_contract
from custody.services.payments import receive_callback
from ledger import clock
from ledger.models import Account, Entry
from ledger.money import from_minor
from reconciliation.services.imports import import_statement
from reconciliation.services.runs import reconcile_statement
from reconciliation.simulator import CustodyBankSimulator, Fault, FaultKind

SHANGHAI = ZoneInfo("Asia/Shanghai")
STORY_DAYS = 80  # from the first registration to ``end_date``
LAST_EARLY_SIGN_DAY = 48  # most contracts are signed in the first seven weeks, when the courses start
LATE_SIGNING_SHARE = 0.3  # of the ordinary paid contracts, signed later (up to the story's last days)
RECONCILED_DAYS = 7  # the custody bank's daily statements of the story's last week, reconciled (对账)

Progress = Callable[[str], None]


class DemoError(Exception):
    """The demo cannot be built here (a missing key, or a check that failed after building)."""


@dataclass(frozen=True)
class DemoOptions:
    seed: int = 2024
    scale: float = 1.0  # 1.0: 20 institutions, 200 parents, ~300 contracts
    end_date: date | None = None  # the story's last day (Shanghai); default yesterday by business time
    bank_signing_key: str = ""  # base64 of the custody bank's raw Ed25519 private key (settings.DEMO_...)
    bank_key_id: str = ""
    demo_users: bool = False  # create login users with printed passwords (DEBUG only)


@dataclass(frozen=True)
class DemoCredential:
    role: str
    username: str
    password: str
    detail: str
    totp_secret: str = ""  # base32, for an authenticator app (regulator and bank operator sign in with TOTP)


@dataclass
class DemoSummary:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    credentials: list[DemoCredential] = field(default_factory=list)
    end_date: date | None = None

    def lines(self) -> list[str]:
        return [
            f"  {group}: " + ", ".join(f"{key} {value}" for key, value in sorted(values.items()))
            for group, values in self.counts.items()
        ]


# --- fictional people ---------------------------------------------------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# The commonest surnames first; the weights roughly follow their frequency.
SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程魏苏吕丁任沈"
    "姚卢傅钟姜崔谭廖范汪陆金石戴贾韦夏邱方侯邹熊孟秦白江阎薛尹段雷黎史龙陶贺顾毛郝龚邵万钱严覃武"
)
_SURNAME_WEIGHTS = [1.0 / (rank + 4) for rank in range(len(SURNAMES))]
FATHER_NAMES = _words(
    "伟 强 磊 军 勇 杰 涛 斌 超 明 刚 平 辉 鹏 华 飞 鑫 波 宇 浩 "
    "凯 健 俊 帆 旭 宁 峰 建华 志强 国平 海涛 文斌 晓东 建军 永刚 建平 "
    "志勇 红兵 小龙 德明 俊杰"
)
MOTHER_NAMES = _words(
    "芳 娜 敏 静 丽 艳 娟 霞 燕 玲 婷 雪 琳 颖 倩 洁 慧 晶 萍 红 "
    "秀英 桂英 晓燕 丽娟 海燕 雪梅 春梅 玉兰 小红 晓丽 文静 丹丹 莉莉 "
    "思琪"
)
BOY_NAMES = _words(
    "子轩 浩然 宇轩 俊熙 宇航 博文 梓睿 沐阳 睿泽 子墨 奕辰 天佑 铭轩 "
    "一鸣 皓轩 思远 嘉懿 明哲 承泽 锦程 书恒 乐天 煜城 晨阳"
)
GIRL_NAMES = _words(
    "梓涵 一诺 欣怡 思彤 雨桐 可馨 梓萱 诗涵 语桐 依诺 若汐 嘉怡 晨曦 "
    "书瑶 佳琪 紫涵 雨萱 芷若 诗琪 梦瑶 安然 可欣 婉清 心怡"
)
# 行政区划代码 of the birthplaces on the ID numbers: mostly Chongqing districts, some neighbours.
REGIONS = ("500112", "500112", "500112", "500105", "500103", "500106", "500108", "500107", "500113",
           "500109", "500235", "500234", "510107", "511602", "510703")  # fmt: skip
MOBILE_PREFIXES = _words(
    "138 139 136 137 135 158 159 150 151 152 187 188 182 183 186 185 130 131 132 155 156 176 177 180 181 189 "
    "199 191 173 133 153"
)
CARD_BINS = ("622202", "621700", "622848", "621483", "622588", "623058")  # bank-card prefixes (BIN)

GRADES = ("一年级", "二年级", "三年级", "四年级", "五年级", "六年级", "初一", "初二", "初三")


def id_number(region: str, birth: date, sequence: int) -> str:
    """An 18-character resident ID number with its MOD 11-2 check character; ``sequence`` (0–999) is odd for
    men and even for women, as on real ones."""
    first17 = f"{region}{birth:%Y%m%d}{sequence:03d}"
    return first17 + people.id_number_check_character(first17)


def luhn_complete(partial: str) -> str:
    """``partial`` plus its Luhn check digit (bank card numbers carry one)."""
    total = 0
    for position, char in enumerate(reversed(partial)):
        digit = int(char)
        if position % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return partial + str((10 - total % 10) % 10)


class People:
    """Fictional names, ID numbers, mobiles and bank cards, never repeated within one demo."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._ids: set[str] = set()
        self._phones: set[str] = set()
        self._cards: set[str] = set()

    def surname(self) -> str:
        return self.rng.choices(SURNAMES, weights=_SURNAME_WEIGHTS)[0]

    def id_number(self, birth: date, *, male: bool) -> str:
        while True:
            sequence = self.rng.randrange(0, 1000)
            if sequence % 2 != int(male):
                sequence = (sequence + 1) % 1000
            number = id_number(self.rng.choice(REGIONS), birth, sequence)
            if number not in self._ids:
                self._ids.add(number)
                return number

    def phone(self) -> str:
        while True:
            number = self.rng.choice(MOBILE_PREFIXES) + f"{self.rng.randrange(10**8):08d}"
            if number not in self._phones:
                self._phones.add(number)
                return number

    def bank_card(self) -> str:
        while True:
            card = luhn_complete(self.rng.choice(CARD_BINS) + f"{self.rng.randrange(10**12):012d}")
            if card not in self._cards:
                self._cards.add(card)
                return card

    def birth(self, first_year: int, last_year: int) -> date:
        start = date(first_year, 1, 1)
        return start + timedelta(days=self.rng.randrange((date(last_year, 12, 31) - start).days + 1))


# --- the district's institutions and their courses ----------------------------------------------------------


@dataclass(frozen=True)
class CourseSpec:
    name: str
    subject: str
    band: str
    mode: str
    price_fen: int  # per class hour; subject courses stay within guidance × 110 %
    level: str = "any"  # primary (一至六年级), junior (初中) or any


S, M, L = ClassSizeBand.SMALL, ClassSizeBand.MEDIUM, ClassSizeBand.LARGE
OFF, ON = TeachingMode.OFFLINE, TeachingMode.ONLINE
# Default guidance prices (small / medium / large offline 80 / 60 / 40 yuan, online 20) + 10 %: caps of
# 88.00 / 66.00 / 44.00 / 22.00 yuan per class hour.
SUBJECT_COURSES = (
    CourseSpec("小学数学思维培优班", "数学", S, OFF, 8_500, "primary"),
    CourseSpec("小学英语自然拼读", "英语", M, OFF, 6_200, "primary"),
    CourseSpec("小学语文阅读与写作", "语文", M, OFF, 5_800, "primary"),
    CourseSpec("小学英语线上外教课", "英语", S, ON, 2_000, "primary"),
    CourseSpec("初中数学同步提高班", "数学", S, OFF, 8_800, "junior"),
    CourseSpec("初中物理实验探究班", "物理", M, OFF, 6_600, "junior"),
    CourseSpec("初中英语听说强化", "英语", L, OFF, 4_200, "junior"),
    CourseSpec("初三化学冲刺班", "化学", M, OFF, 6_500, "junior"),
    CourseSpec("初中数学线上精讲", "数学", L, ON, 2_200, "junior"),
)
NON_SUBJECT_COURSES: dict[str, tuple[CourseSpec, ...]] = {
    "美术": (
        CourseSpec("少儿创意美术", "美术", M, OFF, 15_000),
        CourseSpec("素描基础班", "美术", S, OFF, 18_000),
        CourseSpec("硬笔书法精品班", "书法", M, OFF, 9_000),
    ),
    "舞蹈": (
        CourseSpec("中国舞考级班", "舞蹈", M, OFF, 16_000),
        CourseSpec("少儿街舞", "街舞", M, OFF, 14_000),
        CourseSpec("芭蕾启蒙", "芭蕾", S, OFF, 20_000),
    ),
    "音乐": (
        CourseSpec("钢琴一对一", "钢琴", S, OFF, 30_000),
        CourseSpec("少儿声乐", "声乐", S, OFF, 22_000),
        CourseSpec("尤克里里小班", "尤克里里", S, OFF, 12_000),
    ),
    "棋类": (
        CourseSpec("少儿围棋启蒙", "围棋", M, OFF, 12_000),
        CourseSpec("国际象棋进阶", "国际象棋", S, OFF, 15_000),
    ),
    "科技": (
        CourseSpec("Scratch少儿编程", "编程", S, OFF, 16_000),
        CourseSpec("Python青少年编程", "编程", S, ON, 13_000),
        CourseSpec("乐高机器人搭建", "机器人", S, OFF, 20_000),
    ),
    "体育": (
        CourseSpec("青少年篮球训练营", "篮球", L, OFF, 10_000),
        CourseSpec("少儿游泳初级班", "游泳", S, OFF, 14_000),
        CourseSpec("跆拳道黄带班", "跆拳道", M, OFF, 11_000),
    ),
    "语言": (
        CourseSpec("少儿口才与主持", "口才", S, OFF, 13_000),
        CourseSpec("绘本阅读与表达", "阅读表达", S, OFF, 11_000),
    ),
}
NON_SUBJECT_SUFFIX = {
    "美术": "美术培训中心",
    "舞蹈": "舞蹈艺术培训学校",
    "音乐": "音乐艺术培训中心",
    "棋类": "棋院",
    "科技": "科技教育培训中心",
    "体育": "体育培训中心",
    "语言": "语言艺术培训中心",
}
NAME_CORES = _words(
    "启航 博学 明德 育才 思源 致远 求是 鸿鹄 立达 博睿 新禾 晨阳 嘉木 "
    "星火 翰林 青蓝 知行 乐思 橙果 小树苗 梧桐 北辰 天问 溪山 云朵 未来 "
    "彩虹 木棉 麓山 悦动"
)
CUSTODY_BANKS = (
    "重庆农村商业银行渝北支行",
    "中国建设银行重庆渝北支行",
    "中国工商银行重庆两江分行",
    "招商银行重庆分行",
)


@dataclass
class InstitutionPlan:
    name: str
    category: str
    mode: str
    role: str  # normal, abnormal (跑路), planned (closes with notice), frozen
    specialty: str
    bank: str
    institution: Institution | None = None
    courses: list[Course] = field(default_factory=list)
    course_specs: list[CourseSpec] = field(default_factory=list)


@dataclass
class StudentPlan:
    guardian_index: int
    name: str
    id_number: str
    grade_index: int  # 0 = 一年级 … 8 = 初三
    student: Student | None = None

    @property
    def level(self) -> str:
        return "primary" if self.grade_index < 6 else "junior"


@dataclass
class ContractPlan:
    index: int
    institution: InstitutionPlan
    course_index: int
    student: StudentPlan
    sign_day: int  # days after the story's first day
    starts_on: date
    ends_on: date
    paid_hours: int
    gift_hours: int
    amount_fen: int
    weekdays: tuple[int, ...]  # when the sessions are
    session_hours: int
    fate: str = "paid"  # paid, unpaid (never pays: lapses), cancelled (the parent cancels the order)
    replay: bool = False  # the bank sends its notice twice
    refund: str = ""  # approved, silence, rejected, claimed, late, before_start
    refund_day: int = 0
    contract: Contract | None = None
    payer_account: str = ""


# --- the story ----------------------------------------------------------------------------------------------


class DemoBuilder:
    """Plays the story day by day; every write goes through a service."""

    def __init__(self, options: DemoOptions, progress: Progress) -> None:
        self.options = options
        self.progress = progress
        self.rng = random.Random(options.seed)
        self.people = People(self.rng)
        if not options.bank_signing_key or not options.bank_key_id:
            raise DemoError(
                "示范数据需要开发环境的托管银行密钥 the demo needs the dev custody-bank key "
                "(settings.DEMO_BANK_SIGNING_KEY / DEMO_BANK_KEY_ID, generated in DEBUG)"
            )
        self.bank_key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(options.bank_signing_key))
        self.end_date = options.end_date or (clock.now().astimezone(SHANGHAI).date() - timedelta(days=1))
        self.first_day = self.end_date - timedelta(days=STORY_DAYS)
        self.scale = options.scale
        self.summary = DemoSummary(end_date=self.end_date)
        self.regulator_user: User | None = None
        self.clerk_user: User | None = None
        self.parent_user: User | None = None
        # Follow-ups keyed by story day: parents' answers to lessons, resolutions of disputes.
        self.parent_actions: dict[int, list[tuple[str, int]]] = defaultdict(list)
        self.resolutions: dict[int, list[tuple[str, int]]] = defaultdict(list)
        self.failed_release_done = False
        self.wrong_amount_sent = False
        self.dispute_fates: set[str] = set()
        self.disputes_planned = 0
        self.txn_serial = 0
        self.bank_book: CustodyBankSimulator | None = None  # the bank's own book, for the reconciled days

    # --- helpers --------------------------------------------------------------------------------------------

    def day(self, offset: int) -> date:
        return self.first_day + timedelta(days=offset)

    def at(self, offset: int, hour: int, minute: int = 0) -> datetime:
        """Move business time forward to story day ``offset`` at hh:mm Shanghai (never backwards)."""
        moment = datetime.combine(self.day(offset), time(hour, minute), tzinfo=SHANGHAI)
        current = clock.now()
        if moment > current:
            clock.advance(moment - current)
        return clock.now()

    def scaled(self, base: int, minimum: int) -> int:
        return max(minimum, round(base * self.scale))

    # --- the whole run --------------------------------------------------------------------------------------

    def build(self) -> DemoSummary:
        start = datetime.combine(self.first_day, time(9, 0), tzinfo=SHANGHAI)
        with clock.frozen_at(start):
            self.setup_district()
            self.plan_people()
            self.plan_contracts()
            self.progress(
                f"[3/6] 模拟{STORY_DAYS}天 simulating {STORY_DAYS} days, {self.first_day} .. {self.end_date}"
            )
            for offset in range(STORY_DAYS + 1):
                self.play(offset)
                if offset % 10 == 0 or offset == STORY_DAYS:
                    self.progress(
                        f"      day {offset:>2}/{STORY_DAYS} {self.day(offset)}: {self.brief_counts()}"
                    )
            self.at(STORY_DAYS, 22, 0)
            self.reconcile()
            self.finish()
        return self.summary

    # --- day 0: the regulator, the institutions, their courses ----------------------------------------------

    def setup_district(self) -> None:
        self.progress("[1/6] 监管区域与机构 jurisdiction, policy, institutions and courses")
        city = policy.ensure_jurisdiction(code="500000", name="重庆市")
        self.jurisdiction = policy.ensure_jurisdiction(code="500112", name="重庆市渝北区", parent=city)
        if self.options.demo_users:
            self.create_users_before()
        policy.publish_policy(
            jurisdiction=self.jurisdiction,
            # A district of small schools: a week of lessons worth 6,000 yuan is already a lot, and four
            # refund claims in a week at one school are a rush.
            changes={
                "risk_reserve_allowed": True,
                "risk_thresholds": {
                    "consumption_spike_min_fen": 600_000,
                    "refund_claims_per_week": 4,
                    "refund_claims_per_week_red": 8,
                },
            },
            changed_by=self.regulator_user,
            note="允许非学科类机构选择风险保证金方式；大额消课预警起点调为6,000元；七日退费申请4笔即预警 "
            "non-subject institutions may choose a risk reserve; the consumption-spike alert starts at 6,000 "
            "yuan; four refund claims in seven days raise an alert",
        )
        count = self.scaled(20, 8)
        cores = self.rng.sample(NAME_CORES, count)
        specialties = list(NON_SUBJECT_COURSES)
        plans: list[InstitutionPlan] = []
        for index in range(count):
            # Fixed roles at fixed places, so even a small demo has every kind of institution.
            role = {1: "abnormal", 2: "planned", 6: "frozen"}.get(index, "normal")
            reserve_mode = index == 3 or (index == 7 and count >= 10)
            subject = index in (0, 1, 4) or (index >= 8 and index % 5 in (0, 2))
            specialty = "" if subject else specialties[index % len(specialties)]
            suffix = "培训学校" if subject else NON_SUBJECT_SUFFIX[specialty]
            plans.append(
                InstitutionPlan(
                    name=f"重庆渝北{cores[index]}{suffix}",
                    category=TrainingCategory.SUBJECT if subject else TrainingCategory.NON_SUBJECT,
                    mode=SupervisionMode.RISK_RESERVE if reserve_mode else SupervisionMode.CUSTODY,
                    role=role,
                    specialty=specialty,
                    bank=CUSTODY_BANKS[0] if index == 0 else self.rng.choice(CUSTODY_BANKS),
                )
            )
        for index, plan in enumerate(plans):
            plan.institution = institutions.register_institution(
                jurisdiction=self.jurisdiction,
                name=plan.name,
                licence_number=f"教民150011260{index + 1:06d}",
                category=plan.category,
                supervision_mode=plan.mode,
                custody_bank_name=plan.bank,
                custody_account_number=f"5001{self.rng.randrange(10**14):014d}",
                settlement_account_number=f"3100{self.rng.randrange(10**14):014d}",
            )
            if plan.mode == SupervisionMode.RISK_RESERVE:
                # 风险保证金: at least the policy minimum of 100,000 yuan, deposited with the bank.
                reserve.deposit_reserve(
                    institution=plan.institution,
                    amount=from_minor(12_000_000, "CNY"),
                    key=f"BZJ{self.first_day:%Y%m%d}{index:04d}",
                )
            specs = (
                self.rng.sample(SUBJECT_COURSES, 3)
                if plan.category == TrainingCategory.SUBJECT
                else list(NON_SUBJECT_COURSES[plan.specialty])
            )
            for spec in specs:
                plan.courses.append(
                    courses.publish_course(
                        institution=plan.institution,
                        name=spec.name,
                        subject=spec.subject,
                        category=plan.category,
                        class_size_band=spec.band,
                        mode=spec.mode,
                        price_per_hour=from_minor(spec.price_fen, "CNY"),
                        starts_on=self.day(self.rng.randint(8, 22)),
                    )
                )
                plan.course_specs.append(spec)
        self.institutions = plans
        self.role_of = {plan.institution.pk: plan.role for plan in plans if plan.institution is not None}
        if self.options.demo_users:
            self.create_users_after()

    # --- parents and students -------------------------------------------------------------------------------

    def plan_people(self) -> None:
        guardians = self.scaled(200, 16)
        self.progress(f"[2/6] 家长与学生 {guardians} parents and their children")
        self.students: list[StudentPlan] = []
        self.guardians: list[Guardian] = []
        self.guardian_cards: list[str] = []
        year = self.end_date.year - (0 if self.end_date.month >= 9 else 1)  # the school year's first year
        for index in range(guardians):
            surname = self.people.surname()
            father = self.rng.random() < 0.45
            given = self.rng.choice(FATHER_NAMES if father else MOTHER_NAMES)
            birth = self.people.birth(1979, 1991)
            guardian = people.register_guardian(
                name=surname + given,
                phone=self.people.phone(),
                id_number=self.people.id_number(birth, male=father),
                user=self.parent_user if index == 0 else None,
            )
            self.guardians.append(guardian)
            self.guardian_cards.append(self.people.bank_card())
            children = 2 if index == 0 or self.rng.random() < 0.3 else 1
            for _ in range(children):
                grade = self.rng.randrange(len(GRADES))
                boy = self.rng.random() < 0.5
                # A child in grade g (0-based) in the school year starting ``year`` was born in year − 6 − g.
                born = self.people.birth(year - 7 - grade, year - 7 - grade)
                plan = StudentPlan(
                    guardian_index=index,
                    name=surname + self.rng.choice(BOY_NAMES if boy else GIRL_NAMES),
                    id_number=self.people.id_number(born, male=boy),
                    grade_index=grade,
                )
                plan.student = people.add_student(
                    guardian=guardian, name=plan.name, id_number=plan.id_number, grade=GRADES[grade]
                )
                self.students.append(plan)

    # --- what will be bought, when, and what becomes of it --------------------------------------------------

    def plan_contracts(self) -> None:
        target = self.scaled(300, 24)
        weights = [self.rng.uniform(0.6, 1.8) for _ in self.institutions]
        used: set[tuple[int, int, str]] = set()  # (student, institution, subject): one open contract each
        plans: list[ContractPlan] = []
        # The demo parent's two children first (both normal institutions), then three per institution, then
        # the rest by each institution's popularity.
        choices: list[InstitutionPlan] = [self.institutions[0], self.institutions[5]]
        choices += [plan for plan in self.institutions for _ in range(3)]
        while len(choices) < target:
            choices.append(self.rng.choices(self.institutions, weights=weights)[0])
        for index, institution in enumerate(choices[:target]):
            student = self.students[index] if index < 2 else None
            plan = self.plan_one(index, institution, student, used)
            if plan is not None:
                plans.append(plan)
        self.assign_fates(plans)
        self.contracts = plans
        self.by_sign_day: dict[int, list[ContractPlan]] = defaultdict(list)
        for plan in plans:
            self.by_sign_day[plan.sign_day].append(plan)
        self.by_refund_day: dict[int, list[ContractPlan]] = defaultdict(list)
        for plan in plans:
            if plan.refund:
                self.by_refund_day[plan.refund_day].append(plan)

    def plan_one(
        self,
        index: int,
        institution: InstitutionPlan,
        wanted: StudentPlan | None,
        used: set[tuple[int, int, str]],
    ) -> ContractPlan | None:
        for attempt in range(40):
            course_index = self.rng.randrange(len(institution.courses))
            spec = institution.course_specs[course_index]
            student = wanted if wanted is not None and attempt < 20 else self.rng.choice(self.students)
            if spec.level not in ("any", student.level):
                continue
            key = (id(student), id(institution), spec.subject)
            if key in used:
                continue
            used.add(key)
            break
        else:
            return None
        course = institution.courses[course_index]
        sign_day = self.rng.randint(1, LAST_EARLY_SIGN_DAY)
        starts_on = max(course.starts_on, self.day(sign_day + self.rng.randint(0, 5)))
        ends_on = min(latest_service_end(starts_on, 3), starts_on + timedelta(days=self.rng.randint(56, 88)))
        if institution.category == TrainingCategory.SUBJECT:
            paid = self.rng.choice((20, 24, 30, 36, 40))
            gift = self.rng.choice((0, 0, 0, 2, 4))
            session = 2
            weekdays: tuple[int, ...] = (self.rng.choice((1, 2, 3, 4, 5, 6)),)
        else:
            most = 500_000 // spec.price_fen  # one non-subject charge is at most 5,000 yuan
            paid = self.rng.choice([h for h in (8, 10, 12, 16, 20, 24, 30) if h <= most])
            gift = self.rng.choice((0, 0, 0, 0, 1, 2))
            session = self.rng.choice((1, 2, 2))
            weekdays = (self.rng.choice((5, 6, 6, 2, 4)),)
        if self.rng.random() < 0.2:
            weekdays = (weekdays[0], (weekdays[0] + 3) % 7)
        amount = spec.price_fen * paid
        if self.rng.random() < 0.25:
            amount = amount * self.rng.choice((95, 90)) // 100  # 九五折 / 九折: the unit price is not whole
        return ContractPlan(
            index=index,
            institution=institution,
            course_index=course_index,
            student=student,
            sign_day=sign_day,
            starts_on=starts_on,
            ends_on=ends_on,
            paid_hours=paid,
            gift_hours=gift,
            amount_fen=amount,
            weekdays=weekdays,
            session_hours=session,
        )

    def assign_fates(self, plans: list[ContractPlan]) -> None:
        ordinary = [p for p in plans[2:] if p.institution.role == "normal"]
        self.rng.shuffle(ordinary)
        taken: set[int] = set()

        def pick(condition: Callable[[ContractPlan], bool]) -> ContractPlan | None:
            for plan in ordinary:
                if plan.index not in taken and condition(plan):
                    taken.add(plan.index)
                    return plan
            return None

        unpaid = max(1, round(len(plans) * 0.03))
        cancelled = max(1, round(len(plans) * 0.01))
        for number in range(unpaid):
            if (plan := pick(lambda p: True)) is not None:
                plan.fate = "unpaid"
                if number % 2 == 0:  # signed in the last days: still awaiting payment at the end
                    self.sign_late(plan, STORY_DAYS - self.rng.randint(1, 5))
                # the others lapse unpaid after the policy's window (逾期未付款自动取消)
        for _ in range(cancelled):
            if (plan := pick(lambda p: True)) is not None:
                plan.fate = "cancelled"
        # Refunds: every kind at least once, then more of the common ones. "late" is approved two days before
        # the end, so its payout is still with the bank; "claimed" still awaits the institution's answer.
        kinds = ["approved", "silence", "rejected", "claimed", "before_start", "late", "approved", "silence"]
        while len(kinds) < round(len(plans) * 0.06):
            kinds.append(self.rng.choice(("approved", "approved", "silence", "rejected")))
        for kind in kinds:
            # Enough hours that value is left when the claim comes, even at the end of the story.
            plan = pick(lambda p: p.paid_hours >= 20 and p.fate == "paid")
            if plan is None:
                continue
            plan.refund = kind
            plan.weekdays = plan.weekdays[:1]  # one session a week
            if kind in ("claimed", "late"):
                plan.session_hours = 1  # 20 hours last 20 weeks: active when the claim comes at the end
            if kind == "before_start":
                # Claimed the day after paying, before the first lesson: refunded in full.
                plan.sign_day = max(1, (plan.starts_on - self.first_day).days - 6)
                plan.refund_day = plan.sign_day + 1
            elif kind == "claimed":
                plan.refund_day = STORY_DAYS - 1
            elif kind == "late":
                plan.refund_day = STORY_DAYS - 2
            else:
                first = (plan.starts_on - self.first_day).days + 7
                plan.refund_day = self.rng.randint(min(first, STORY_DAYS - 20), STORY_DAYS - 14)
        for plan in plans:
            if plan.fate == "paid" and not plan.refund and (plan.index == 0 or self.rng.random() < 0.05):
                plan.replay = True  # the bank sends its notice twice (the first contract always)
        # Families keep signing up to the last days, so the last month's charts show money coming in too.
        # Only ordinary paid contracts beyond the three per institution move: refunds, closures, the demo
        # parent's story and a small demo's mix of states keep their days.
        first_extra = 2 + 3 * len(self.institutions)
        for plan in ordinary:
            if plan.index < first_extra or plan.index in taken or plan.fate != "paid":
                continue
            if self.rng.random() >= LATE_SIGNING_SHARE:
                continue
            self.sign_late(plan, self.rng.randint(LAST_EARLY_SIGN_DAY + 1, STORY_DAYS - 3))

    def sign_late(self, plan: ContractPlan, day: int) -> None:
        plan.sign_day = day
        plan.starts_on = self.day(day + self.rng.randint(0, 5))
        length = timedelta(days=self.rng.randint(56, 88))
        plan.ends_on = min(latest_service_end(plan.starts_on, 3), plan.starts_on + length)

    # --- one day --------------------------------------------------------------------------------------------

    def play(self, offset: int) -> None:
        """One story day; in the last week inside the bank's day (its statements are written at its end)."""
        if offset == STORY_DAYS + 1 - RECONCILED_DAYS:
            self.open_bank_book()
        if self.bank_book is None:
            self.play_day(offset)
            return
        with self.bank_book.day(
            self.day(offset), faults=self.bank_faults(offset), execute=False, settle_channels=False
        ):
            self.play_day(offset)

    def play_day(self, offset: int) -> None:
        self.at(offset, 2, 0)
        lessons.auto_confirm_due_lessons()
        lapse_unpaid_contracts()
        refunds.approve_unanswered_refunds()
        refunds.instruct_refund_payouts()
        reserve.check_reserves()
        alerts.run_risk_scan()
        # Release runs and the bank's executions happen on working days (调休 included).
        if calendar.is_working_day(self.day(offset)):
            self.at(offset, 3, 0)
            payouts.run_release_payouts()
            self.at(offset, 9, 30)
            self.bank_executes(offset)
        self.sign_and_pay(offset)
        self.at(offset, 13, 0)
        self.regulator_events(offset)
        self.at(offset, 14, 0)
        self.refund_events(offset)
        self.at(offset, 20, 0)
        self.record_lessons(offset)
        self.runaway_lessons(offset)
        self.at(offset, 21, 0)
        self.parents_answer(offset)
        self.at(offset, 21, 30)
        self.resolve_disputes(offset)

    def next_txn(self) -> str:
        self.txn_serial += 1
        return f"CQB{clock.now().astimezone(SHANGHAI):%Y%m%d}{self.txn_serial:08d}"

    def bank_notice(
        self, contract: Contract, *, txn: str, payer: str, amount_fen: int | None = None
    ) -> tuple[dict[str, str], bytes]:
        body = bank_callback_body(
            transaction_id=txn,
            order_reference=contract.number,
            amount_fen=contract.amount_fen if amount_fen is None else amount_fen,
            paid_at=clock.now(),
            payer_account=payer,
        )
        return sign_bank_callback(self.bank_key, self.options.bank_key_id, body, clock.now()), body

    def sign_and_pay(self, offset: int) -> None:
        todays = self.by_sign_day.get(offset, [])
        if offset == 1:
            self.forged_callback()
        for n, plan in enumerate(todays):
            self.at(offset, 10, min(n * 2, 59) if n < 30 else 59)
            institution = plan.institution.institution
            if institution is None or institution.state != InstitutionState.ACTIVE:
                continue
            course = plan.institution.courses[plan.course_index]
            assert plan.student.student is not None
            contract = sign_contract(
                course=course,
                student=plan.student.student,
                paid_hours=plan.paid_hours,
                gift_hours=plan.gift_hours,
                amount=from_minor(plan.amount_fen, "CNY"),
                service_starts_on=plan.starts_on,
                service_ends_on=plan.ends_on,
            )
            plan.contract = contract
            if plan.fate != "paid":
                continue
            plan.payer_account = self.guardian_cards[plan.student.guardian_index]
            if not self.wrong_amount_sent:
                # A notice for the wrong amount (the parent paid the list price, not the discounted one):
                # refused and logged; the bank then sends the right one.
                self.wrong_amount_sent = True
                headers, body = self.bank_notice(
                    contract,
                    txn=self.next_txn(),
                    payer=plan.payer_account,
                    amount_fen=contract.amount_fen + 100,
                )
                try:
                    receive_callback(channel="bank", headers=headers, body=body, source_ip="10.20.0.8")
                except PaymentRejected:
                    pass
                else:  # pragma: no cover - a wrong amount was accepted
                    raise DemoError("a bank notice for the wrong amount was accepted")
            txn = self.next_txn()
            headers, body = self.bank_notice(contract, txn=txn, payer=plan.payer_account)
            receive_callback(channel="bank", headers=headers, body=body, source_ip="10.20.0.8")
            if plan.replay:
                # The bank missed our acknowledgement and sends the notice again (new nonce, same payment).
                headers, body = self.bank_notice(contract, txn=txn, payer=plan.payer_account)
                receive_callback(channel="bank", headers=headers, body=body, source_ip="10.20.0.8")

    def forged_callback(self) -> None:
        """A notice signed with a key that is not the bank's: refused and logged, nothing posted."""
        forger = Ed25519PrivateKey.from_private_bytes(bytes(self.rng.randrange(256) for _ in range(32)))
        body = bank_callback_body(
            transaction_id="CQB-FORGED-0001",
            order_reference="HT-UNKNOWN",
            amount_fen=480_000,
            paid_at=clock.now(),
            payer_account=self.people.bank_card(),
        )
        headers = sign_bank_callback(forger, self.options.bank_key_id, body, clock.now())
        try:
            receive_callback(channel="bank", headers=headers, body=body, source_ip="203.0.113.66")
        except CallbackRejected:
            return
        raise DemoError("a forged bank notice was accepted")  # pragma: no cover

    def regulator_events(self, offset: int) -> None:
        for order in self.by_sign_day.get(offset - 1, []):
            if order.fate == "cancelled" and order.contract is not None:
                # The parent cancels the unpaid order (订单取消).
                cancel_unpaid_contract(contract=order.contract)
        for school in self.institutions:
            institution = school.institution
            assert institution is not None
            if school.role == "abnormal" and offset == STORY_DAYS - 12:
                closure = closures.order_closure(
                    institution=institution,
                    mode=ClosureMode.ABNORMAL,
                    reason="机构负责人失联、停止授课（跑路），监管部门冻结账户并启动退费 "
                    "the owner vanished and teaching stopped: frozen and refunded",
                    ordered_by=self.regulator_user,
                )
                closures.run_closure(closure=closure, batch_size=50)
                # The periodic job runs it again: nothing happens twice.
                closures.run_closure(closure=closure, batch_size=50)
                self.answer_alerts(institution, resolve=True)
            elif school.role == "abnormal" and offset == STORY_DAYS - 13:
                self.answer_alerts(institution, resolve=False)
            elif school.role == "planned" and offset == STORY_DAYS - 6:
                closures.order_closure(
                    institution=institution,
                    mode=ClosureMode.PLANNED,
                    reason="场地租约到期，计划停办，公告期30天 the lease ends: planned, 30 days' notice",
                    ordered_by=self.regulator_user,
                )
            elif school.role == "frozen" and offset == STORY_DAYS - 3:
                self.answer_alerts(institution, resolve=False)
                institutions.freeze_institution(
                    institution=institution,
                    reason="风险预警：连续多日大额退费申请，暂停收费与拨付 risk alert: refund claims spike",
                )
        self.review_cleared_alerts()

    def review_cleared_alerts(self) -> None:
        """The regulator closes the alerts whose condition the scans have not found for three days."""
        reviewed = clock.now() - timedelta(days=3)
        for alert in RiskAlert.objects.filter(state__in=alerts.UNRESOLVED, cleared_at__lte=reviewed):
            note = "复核：情况已消除，机构恢复正常 reviewed: the condition is gone, back to normal"
            alerts.resolve_alert(alert=alert, by=self.regulator_user, note=note)

    def refund_events(self, offset: int) -> None:
        self.refund_rush(offset)
        for plan in self.by_refund_day.get(offset, []):
            contract = plan.contract
            if contract is None or plan.fate != "paid":
                continue
            contract.refresh_from_db()
            if contract.state != ContractState.ACTIVE:
                continue
            refund = refunds.claim_refund(
                contract=contract,
                note=self.rng.choice(
                    (
                        "孩子学业安排调整，申请退还剩余课时费用 schedule change",
                        "搬家转学，无法继续上课 moving away",
                        "对教学质量不满意 unhappy with the teaching",
                        "课程时间冲突 timetable clash",
                    )
                ),
                idempotency_key=f"demo-refund-{contract.number}",
            )
            if plan.refund in ("approved", "before_start", "late"):
                self.resolutions[offset + 1].append(("approve_refund", refund.pk))
            elif plan.refund == "rejected":
                self.resolutions[offset + 2].append(("reject_refund", refund.pk))

    def refund_rush(self, offset: int) -> None:
        """Word goes round that one school is in trouble: on two days its parents claim refunds, two a day.
        The next risk scan sees the claims spike, and the regulator looks into it and freezes the school."""
        if offset not in (STORY_DAYS - 5, STORY_DAYS - 4):
            return
        for school in self.institutions:
            if school.role != "frozen" or school.institution is None:
                continue
            open_contracts = Contract.objects.filter(
                institution=school.institution, state=ContractState.ACTIVE, refunds__isnull=True
            ).order_by("pk")
            claimed = 0
            for contract in open_contracts:
                if claimed == 2:
                    break
                try:
                    refunds.claim_refund(
                        contract=contract,
                        note="听说机构经营困难，申请退还剩余课时费用 word is the school is in trouble",
                        idempotency_key=f"demo-refund-{contract.number}",
                    )
                except RuleViolation:  # nothing left to refund on it (every hour taught or pending)
                    continue
                claimed += 1

    def answer(self, kind: str, refund_id: int) -> None:
        refund = Refund.objects.get(pk=refund_id)
        if refund.state != RefundState.CLAIMED:
            return
        if kind == "approve_refund":
            refunds.answer_refund(refund=refund, approve=True)
            refunds.instruct_refund_payouts(refunds=[refund])
        else:
            refunds.answer_refund(
                refund=refund,
                approve=False,
                reason="已与家长协商一致，继续上课 agreed with the parent to continue the lessons",
            )

    def bank_executes(self, offset: int) -> None:
        """The custody bank executes yesterday's instructions (T+1; refunds T+2). One release payout fails
        once (the payee's account details were wrong) and is instructed again by the next run. On the
        reconciled days the bank's book executes those of its accounts, so that its statements show them."""
        today = datetime.combine(self.day(offset), time(0, 0), tzinfo=SHANGHAI)
        due = PayoutInstruction.objects.filter(state=PayoutState.INSTRUCTED).filter(
            Q(kind=PayoutKind.RELEASE, instructed_at__lt=today)
            | Q(kind=PayoutKind.REFUND, instructed_at__lt=today - timedelta(days=1))
        )
        booked = set(self.bank_book.institution_ids) if self.bank_book is not None else set()
        by_the_book: list[int] = []
        rows = due.order_by("pk").values_list("pk", "reference", "kind", "institution_id")
        for payout_id, reference, kind, institution_id in rows:
            if kind == PayoutKind.RELEASE and not self.failed_release_done and offset >= 30:
                self.failed_release_done = True
                payouts.record_payout_result(
                    reference=reference,
                    executed=False,
                    reason="收款账户户名与账号不符，退回 the payee's name does not match the account",
                )
                continue
            if institution_id in booked:
                by_the_book.append(payout_id)
                continue
            payouts.record_payout_result(
                reference=reference,
                executed=True,
                bank_reference=f"BK{self.day(offset):%Y%m%d}{payout_id:08d}",
            )
        if self.bank_book is not None and by_the_book:
            self.bank_book.execute_instructions(only=by_the_book)

    # --- the last week: the custody bank's statements, reconciled -------------------------------------------

    def open_bank_book(self) -> None:
        """From here on the custody bank keeps its own book of the institutions' supervised accounts and
        writes a statement per account and day (risk-reserve institutions keep parents' money in their own
        accounts, so only full-custody ones). It opens at what the ledger has posted, as a bank's books
        would when reconciliation starts."""
        schools = [
            s.institution
            for s in self.institutions
            if s.institution is not None and s.institution.supervision_mode == SupervisionMode.CUSTODY
        ]
        opening = {
            account.code: account.signed_balance(account.debits_posted, account.credits_posted)
            for account in Account.objects.filter(code__in=[f"custody_cash:i{i.pk}" for i in schools])
        }
        self.bank_book = CustodyBankSimulator(
            institutions=schools,
            seed=self.options.seed,
            opening_balances={i.pk: opening.get(f"custody_cash:i{i.pk}", 0) for i in schools},
        )

    def bank_faults(self, offset: int) -> list[Fault]:
        """What goes wrong at the bank in the last week, for the regulator's break queue: an account fee
        nobody instructed, and a transfer quoting a contract number that does not exist."""
        assert self.bank_book is not None
        home, other = self.bank_book.institution_ids[0], self.bank_book.institution_ids[-1]
        if offset == STORY_DAYS - 2:
            return [Fault(FaultKind.BANK_FEE, institution=home, amount_fen=2_000)]
        if offset == STORY_DAYS - 4:
            return [Fault(FaultKind.UNKNOWN_REFERENCE, institution=other, amount_fen=360_000)]
        return []

    def reconcile(self) -> None:
        if self.bank_book is None:
            return
        deliveries = self.bank_book.deliveries(fmt="csv")
        self.progress(
            f"      对账 reconciling {len(deliveries)} bank statements of the last {RECONCILED_DAYS} days"
        )
        for delivery in deliveries:
            imported = import_statement(data=delivery.data, filename=delivery.filename)
            reconcile_statement(statement=imported.statement)

    def record_lessons(self, offset: int) -> None:
        today = self.day(offset)
        weekday = today.weekday()
        candidates = [
            plan
            for plan in self.contracts
            if plan.contract is not None
            and plan.fate == "paid"
            and weekday in plan.weekdays
            and plan.starts_on <= today <= plan.ends_on
        ]
        if not candidates:
            return
        ids = [plan.contract.pk for plan in candidates if plan.contract is not None]
        stopped = set(
            Refund.objects.filter(
                contract_id__in=ids,
                state__in=(
                    RefundState.CLAIMED,
                    RefundState.APPROVED,
                    RefundState.INSTRUCTED,
                    RefundState.PAID,
                ),
            ).values_list("contract_id", flat=True)
        )
        now = clock.now()
        may_teach = {
            pk
            for pk, state, starts in Institution.objects.values_list(
                "pk", "state", "closure__refunds_start_at"
            )
            if state == InstitutionState.ACTIVE
            or (state == InstitutionState.CLOSING and starts is not None and starts > now)
        }
        rows = {
            c.pk: c
            for c in Contract.objects.filter(
                pk__in=ids, state=ContractState.ACTIVE, institution_id__in=may_teach
            )
        }
        batch: list[lessons.NewLesson] = []
        for plan in candidates:
            assert plan.contract is not None
            contract = rows.get(plan.contract.pk)
            if contract is None or contract.pk in stopped or contract.remaining_hours <= 0:
                continue
            hour = 10 if weekday >= 5 else 16
            batch.append(
                lessons.NewLesson(
                    contract=contract,
                    held_at=datetime.combine(today, time(hour, 0), tzinfo=SHANGHAI),
                    hours=min(plan.session_hours, contract.remaining_hours),
                    idempotency_key=f"{contract.number}-{today:%Y%m%d}",
                )
            )
        # The demo clerk records their own institution's lessons; the other institutions' staff are not users.
        home = self.institutions[0].institution
        own = [new for new in batch if home is not None and new.contract.institution_id == home.pk]
        recorded = lessons.record_lessons(lessons=own, recorded_by=self.clerk_user)
        recorded += lessons.record_lessons(lessons=[new for new in batch if new not in own])
        for lesson in recorded:
            roll = self.rng.random()
            # The first three lessons of ordinary institutions after day 40 are disputed, so even a small demo
            # has an open dispute, an upheld one and a released one (see parents_answer).
            early = (
                offset >= 40 and self.disputes_planned < 3 and self.role_of[lesson.institution_id] == "normal"
            )
            if early or 0.55 <= roll < 0.57:
                self.disputes_planned += 1
                self.parent_actions[offset + 1].append(("dispute", lesson.pk))
            elif roll < 0.55:
                self.parent_actions[offset + self.rng.randint(0, 3)].append(("confirm", lesson.pk))
            # otherwise the parent stays silent: confirmed after 15 working days

    def answer_alerts(self, institution: Institution, *, resolve: bool) -> None:
        """The regulator looks into an institution's open alerts (the runaway's lessons, the frozen school's
        refund claims), and for the runaway closes them at the closure."""
        for alert in RiskAlert.objects.filter(institution=institution).exclude(state=AlertState.RESOLVED):
            if resolve:
                note = "负责人失联，已冻结并启动停办退费 the owner vanished: frozen, closure refunds started"
                alerts.resolve_alert(alert=alert, by=self.regulator_user, note=note)
            elif alert.state == AlertState.OPEN:
                note = "约谈负责人，电话无人接听，派员现场核查 the owner does not answer: inspecting"
                alerts.investigate_alert(alert=alert, by=self.regulator_user, note=note)

    def runaway_lessons(self, offset: int) -> None:
        """Two evenings before the owner vanishes, the absconding institution records four hours that never
        took place (虚假消课) on every contract, to have them released before it runs: the risk scan sees the
        consumption spike. The parents dispute them the next day, and the closure voids them."""
        if offset not in (STORY_DAYS - 15, STORY_DAYS - 14):
            return
        runaway = next(s.institution for s in self.institutions if s.role == "abnormal")
        assert runaway is not None
        today = self.day(offset)
        contracts = Contract.objects.filter(institution=runaway, state=ContractState.ACTIVE).order_by("pk")
        claimed = set(Refund.objects.filter(contract__institution=runaway).values_list("contract", flat=True))
        fake = [
            lessons.NewLesson(
                contract=contract,
                held_at=datetime.combine(today, time(19, 0), tzinfo=SHANGHAI),
                hours=min(4, contract.remaining_hours),
                idempotency_key=f"{contract.number}-{today:%Y%m%d}-evening",
            )
            for contract in contracts
            if contract.remaining_hours > 0 and contract.pk not in claimed
        ]
        for lesson in lessons.record_lessons(lessons=fake):
            self.parent_actions[offset + 1].append(("dispute", lesson.pk))

    def parents_answer(self, offset: int) -> None:
        for action, lesson_id in self.parent_actions.pop(offset, []):
            lesson = Lesson.objects.get(pk=lesson_id)
            if lesson.state != LessonState.PENDING:
                continue  # voided by a closure, or confirmed by silence meanwhile
            if action == "confirm":
                lessons.confirm_lesson(lesson=lesson)
                continue
            lessons.dispute_lesson(
                lesson=lesson,
                reason=self.rng.choice(
                    (
                        "孩子当天请假未上课 my child was absent that day",
                        "实际只上了一节课，登记了两课时 one hour was taught, two recorded",
                        "老师临时换人，课程内容不符 a substitute taught something else",
                    )
                ),
            )
            # One dispute stays open at an ordinary institution, one is upheld and one released; the rest
            # mostly get resolved.
            if self.role_of[lesson.institution_id] == "normal" and "open" not in self.dispute_fates:
                fate = "open"
            elif "upheld" not in self.dispute_fates:
                fate = "upheld"
            elif "release" not in self.dispute_fates:
                fate = "release"
            else:
                fate = self.rng.choice(("release", "release", "upheld", "withdrawn", "open"))
            self.dispute_fates.add(fate)
            if fate != "open":
                self.resolutions[offset + self.rng.randint(3, 6)].append((fate, lesson_id))

    def resolve_disputes(self, offset: int) -> None:
        for fate, item in self.resolutions.pop(offset, []):
            if fate in ("approve_refund", "reject_refund"):
                self.answer(fate, item)
                continue
            lesson = Lesson.objects.get(pk=item)
            if lesson.state != LessonState.DISPUTED:
                continue
            if fate == "release":
                lessons.resolve_dispute(
                    lesson=lesson,
                    release=True,
                    note="核对签到表，学生当天出勤，课时有效 the sign-in sheet shows the child attended",
                    by=ConfirmedBy.INSTITUTION,
                )
            elif fate == "upheld":
                lessons.resolve_dispute(
                    lesson=lesson,
                    release=False,
                    note="经核查家长异议属实，该课时作废 the regulator upheld the parent's dispute",
                    by=ConfirmedBy.REGULATOR,
                )
            else:
                lessons.confirm_lesson(lesson=lesson)  # the parent withdraws the dispute

    # --- the end --------------------------------------------------------------------------------------------

    def brief_counts(self) -> str:
        return (
            f"{Contract.objects.count()} contracts, {Lesson.objects.count()} lessons, "
            f"{Refund.objects.count()} refunds, {PayoutInstruction.objects.count()} payouts"
        )

    def finish(self) -> None:
        self.progress("[4/6] 核对 checking the custody invariants")
        for institution in Institution.objects.order_by("pk"):
            invariant = custody_invariant(institution)
            if not invariant.holds:
                raise DemoError(f"custody invariant broken for {institution.name}: {invariant}")
        for contract in Contract.objects.exclude(
            state__in=(ContractState.AWAITING_PAYMENT, ContractState.CANCELLED)
        ):
            position = contract_position(contract)
            if not position.balanced:
                raise DemoError(f"contract {contract.number} does not add up: {position}")
        self.summary.counts = demo_counts()

    # --- login users (DEBUG only) ---------------------------------------------------------------------------

    def create_users_before(self) -> None:
        self.regulator_user = _demo_user("demo_regulator", "渝北区教委监管员", "regulator-demo-2024")
        self.parent_user = _demo_user("demo_parent", "示范家长", "parent-demo-2024")
        self.clerk_user = _demo_user("demo_clerk", "机构教务", "clerk-demo-2024")

    def create_users_after(self) -> None:
        from custody.services import access

        assert self.regulator_user and self.clerk_user and self.parent_user
        home = self.institutions[0]
        assert home.institution is not None
        access.grant_regulator(user=self.regulator_user, jurisdiction=self.jurisdiction)
        access.grant_institution_staff(user=self.clerk_user, institution=home.institution, role="manager")
        bank_user = _demo_user("demo_bank", "托管银行操作员", "bank-demo-2024")
        access.grant_bank_operator(user=bank_user, bank_name=home.bank)
        regulator_totp = _totp(self.regulator_user, self.rng)
        bank_totp = _totp(bank_user, self.rng)
        self.summary.credentials = [
            DemoCredential(
                "家长 parent", "demo_parent", "parent-demo-2024", "两个孩子的合同 two children's contracts"
            ),
            DemoCredential("机构 institution manager", "demo_clerk", "clerk-demo-2024", f"{home.name}"),
            DemoCredential(
                "监管 regulator", "demo_regulator", "regulator-demo-2024", "重庆市渝北区", regulator_totp
            ),
            DemoCredential("银行 bank operator", "demo_bank", "bank-demo-2024", home.bank, bank_totp),
        ]


def _demo_user(username: str, first_name: str, password: str) -> User:
    user = User(username=username, first_name=first_name)
    user.set_password(password)
    user.save()
    return user


def _totp(user: User, rng: random.Random) -> str:
    """A confirmed TOTP device with a key from the demo's seed; returns the base32 secret to type into an
    authenticator app."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    key = bytes(rng.randrange(256) for _ in range(20))
    TOTPDevice.objects.create(user=user, name="demo", key=key.hex(), confirmed=True)
    return base64.b32encode(key).decode()


def role_models_available() -> bool:
    """Whether the API's role models and two-factor devices are installed (they arrived with the API)."""
    from django.apps import apps

    try:
        from custody.services import access  # noqa: F401
    except ImportError:
        return False
    return apps.is_installed("django_otp.plugins.otp_totp")


# --- reading back -------------------------------------------------------------------------------------------


def demo_counts() -> dict[str, dict[str, int]]:
    """Counts per state of everything the demo made (also what the tests assert on)."""

    def by(queryset: Any, *fields: str) -> dict[str, int]:
        rows = queryset.values(*fields).annotate(n=Count("pk")).order_by(*fields)
        return {"/".join(str(row[f]) or "-" for f in fields): row["n"] for row in rows}

    return {
        "institutions": by(Institution.objects.all(), "category", "supervision_mode", "state"),
        "contracts": by(Contract.objects.all(), "state"),
        "lessons": by(Lesson.objects.all(), "state", "confirmed_by"),
        "refunds": by(Refund.objects.all(), "reason", "state", "approved_by"),
        "payouts": by(PayoutInstruction.objects.all(), "kind", "state"),
        "closures": by(Closure.objects.all(), "mode", "state"),
        "callbacks": by(CallbackLog.objects.all(), "outcome"),
        "people": {
            "guardians": Guardian.objects.count(),
            "students": Student.objects.count(),
            "courses": Course.objects.count(),
            "payments": Payment.objects.count(),
        },
    }


def database_is_empty() -> bool:
    """No custody or ledger data at all (the ledger is append-only: the demo only goes into an empty one)."""
    return not (
        Jurisdiction.objects.exists()
        or Institution.objects.exists()
        or Guardian.objects.exists()
        or Account.objects.exists()
        or Entry.objects.exists()
    )


def build_demo(options: DemoOptions, progress: Progress | None = None) -> DemoSummary:
    """Build the demo district into an empty database (see the module docstring)."""
    if not database_is_empty():
        raise DemoError("数据库中已有数据 the database already holds custody or ledger data")
    builder = DemoBuilder(options, progress or (lambda _line: None))
    return builder.build()


__all__ = [
    "DemoCredential",
    "DemoError",
    "DemoOptions",
    "DemoSummary",
    "build_demo",
    "database_is_empty",
    "demo_counts",
    "id_number",
    "luhn_complete",
    "role_models_available",
]
