"""The custody domain's tables, one module per area."""

from custody.models.contracts import Contract, ContractState
from custody.models.flows import (
    CallbackLog,
    CallbackOutcome,
    Closure,
    ClosureMode,
    ClosureState,
    ConfirmedBy,
    Lesson,
    LessonState,
    Payment,
    PayoutInstruction,
    PayoutKind,
    PayoutState,
    Refund,
    RefundReason,
    RefundState,
)
from custody.models.institutions import (
    Course,
    Institution,
    InstitutionState,
    SupervisionMode,
    TrainingCategory,
)
from custody.models.people import Guardian, Student
from custody.models.policy import (
    ClassSizeBand,
    GuidancePrice,
    Jurisdiction,
    Policy,
    ReleaseCadence,
    TeachingMode,
    WorkdayOverride,
)
from custody.models.reserve import ReserveCheck

__all__ = [
    "CallbackLog",
    "CallbackOutcome",
    "ClassSizeBand",
    "Closure",
    "ClosureMode",
    "ClosureState",
    "ConfirmedBy",
    "Contract",
    "ContractState",
    "Course",
    "Guardian",
    "GuidancePrice",
    "Institution",
    "InstitutionState",
    "Jurisdiction",
    "Lesson",
    "LessonState",
    "Payment",
    "PayoutInstruction",
    "PayoutKind",
    "PayoutState",
    "Policy",
    "Refund",
    "RefundReason",
    "RefundState",
    "ReleaseCadence",
    "ReserveCheck",
    "Student",
    "SupervisionMode",
    "TeachingMode",
    "TrainingCategory",
    "WorkdayOverride",
]
