"""puabo-blac-loan-processor: applications, risk score, decision, offer, disbursement and repayments.

Routes in :mod:`.views`; the loan's state machine and its ledger entries in :mod:`.service`;
the decision's stated rules in :mod:`.decision`; the one call to risk-assessment in
:mod:`.risk`. Emits ``loan.status`` (payload ``loan_id``, ``borrower``, ``status``, ``from``)
on every transition, in the transaction of the change.
"""

from __future__ import annotations

from .views import router

__all__ = ["router"]
