-- Refund payouts (issue 15 follow-up): a refund is paid back out through the provider
-- that took the payment (MTN MoMo refund, M-Pesa reversal, card gateway refund) or from
-- the till, and the ledger says what is still owed to the patient.
--
-- A refund (ledger kind 'refund') now posts refunds +, refunds_payable - (owed back to
-- the patient); its payout's success posts refunds_payable +, clearing:<provider> - (or
-- cash -), kind 'payout', once per payout. A failed payout posts nothing: the amount
-- stays in refunds_payable until a retry or cash pays it.

ALTER TABLE ledger_postings DROP CONSTRAINT ledger_postings_account_check;
ALTER TABLE ledger_postings ADD CONSTRAINT ledger_postings_account_check CHECK (
    account ~ '^(receivables|cash|revenue|refunds|refunds_payable|fees_waived|tax_payable|clearing:[a-z][a-z0-9_]{0,30})$'
);
ALTER TABLE ledger_transactions DROP CONSTRAINT ledger_transactions_kind_check;
ALTER TABLE ledger_transactions ADD CONSTRAINT ledger_transactions_kind_check
    CHECK (kind IN ('invoice', 'payment', 'refund', 'payout', 'waiver', 'void'));

CREATE TABLE refund_payouts (
    id uuid PRIMARY KEY,
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    -- The refund (its ledger transaction) this pays out; a failed payout may be
    -- followed by another (a retry, or cash).
    refund_id uuid NOT NULL REFERENCES ledger_transactions (id),
    payment_id uuid NOT NULL REFERENCES payments (id),
    invoice_id uuid NOT NULL REFERENCES invoices (id),
    patient_id uuid NOT NULL,
    -- momo, mpesa, card (the provider that took the payment) or cash (the till).
    method text NOT NULL CHECK (method ~ '^[a-z][a-z0-9_]{0,30}$'),
    amount bigint NOT NULL CHECK (amount > 0),
    currency char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    -- MoMo: our X-Reference-Id (chosen before calling); card: the gateway's refund id;
    -- M-Pesa: Daraja's ConversationID. NULL until known.
    provider_reference text CHECK (length(provider_reference) BETWEEN 1 AND 200),
    -- M-Pesa: Daraja's OriginatorConversationID.
    originator_reference text CHECK (length(originator_reference) <= 200),
    provider_transaction_id text CHECK (length(provider_transaction_id) <= 200),
    failure_reason text CHECK (length(failure_reason) <= 200),
    created_by uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finalized_at timestamptz,
    expires_at timestamptz NOT NULL,
    -- The reconciler's lease, as payments'.
    next_poll_at timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,
    claimed_by text CHECK (length(claimed_by) <= 200),
    polls integer NOT NULL DEFAULT 0 CHECK (polls >= 0),
    CONSTRAINT refund_payouts_final CHECK ((status = 'pending') = (finalized_at IS NULL))
);

-- A refund is paid out at most once: one payout under way or succeeded at a time.
CREATE UNIQUE INDEX refund_payouts_one_live_per_refund
    ON refund_payouts (refund_id) WHERE status IN ('pending', 'succeeded');
CREATE UNIQUE INDEX refund_payouts_provider_reference
    ON refund_payouts (method, provider_reference) WHERE provider_reference IS NOT NULL;
CREATE INDEX refund_payouts_pending ON refund_payouts (next_poll_at) WHERE status = 'pending';
CREATE INDEX refund_payouts_invoice ON refund_payouts (invoice_id, created_at);
CREATE INDEX refund_payouts_clinic_status ON refund_payouts (clinic_id, status);

-- The payout's ledger entry names it, and is written once per payout.
ALTER TABLE ledger_transactions ADD COLUMN payout_id uuid REFERENCES refund_payouts (id);
CREATE UNIQUE INDEX ledger_one_entry_per_payout
    ON ledger_transactions (payout_id) WHERE kind = 'payout';
