"""The custody domain's tables, one module per area."""

from custody.models.api import ApiToken, BankStatementUpload, IdempotencyRecord
from custody.models.audit import AuditEvent, AuditOutcome
from custody.models.contracts import Contract, ContractState
from custody.models.corrections import CorrectionProposal, CorrectionState
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
from custody.models.roles import BankOperator, InstitutionStaff, RegulatorProfile, StaffRole

__all__ = [
    "ApiToken",
    "AuditEvent",
    "AuditOutcome",
    "BankOperator",
    "BankStatementUpload",
    "CallbackLog",
    "CallbackOutcome",
    "ClassSizeBand",
    "Closure",
    "ClosureMode",
    "ClosureState",
    "ConfirmedBy",
    "Contract",
    "ContractState",
    "CorrectionProposal",
    "CorrectionState",
    "Course",
    "Guardian",
    "GuidancePrice",
    "IdempotencyRecord",
    "Institution",
    "InstitutionStaff",
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
    "RegulatorProfile",
    "ReleaseCadence",
    "ReserveCheck",
    "StaffRole",
    "Student",
    "SupervisionMode",
    "TeachingMode",
    "TrainingCategory",
    "WorkdayOverride",
]
