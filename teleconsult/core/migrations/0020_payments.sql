-- Payments (issue 15), part 2: payments through providers, the callbacks applied
-- (deduplicated), and the idempotency keys of our own API (teleconsult/payments/).

CREATE TABLE payments (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    invoice_id uuid NOT NULL REFERENCES invoices (id),
    patient_id uuid NOT NULL,
    provider text NOT NULL CHECK (provider ~ '^[a-z][a-z0-9_]{0,30}$'),
    amount bigint NOT NULL CHECK (amount > 0),
    currency char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    -- The provider's id of the payment (MoMo X-Reference-Id, M-Pesa CheckoutRequestID,
    -- the card gateway's reference); NULL until the provider answered.
    provider_reference text CHECK (length(provider_reference) BETWEEN 1 AND 200),
    redirect_url text CHECK (length(redirect_url) <= 2000),
    failure_reason text CHECK (length(failure_reason) <= 200),
    provider_transaction_id text CHECK (length(provider_transaction_id) <= 200),
    refunded bigint NOT NULL DEFAULT 0 CHECK (refunded >= 0 AND refunded <= amount),
    created_by uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finalized_at timestamptz,
    -- Past this the reconciler confirms with the provider and marks the payment failed.
    expires_at timestamptz NOT NULL,
    -- The reconciler's lease (as notification_outbox's): claimed rows are polled by
    -- one worker until locked_until; a dead worker's rows are claimed again after it.
    next_poll_at timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,
    claimed_by text CHECK (length(claimed_by) <= 200),
    polls integer NOT NULL DEFAULT 0 CHECK (polls >= 0),
    CONSTRAINT payments_final CHECK ((status = 'pending') = (finalized_at IS NULL)),
    CONSTRAINT payments_refund_only_succeeded CHECK (refunded = 0 OR status = 'succeeded')
);

-- A provider's reference names one payment.
CREATE UNIQUE INDEX payments_provider_reference
    ON payments (provider, provider_reference) WHERE provider_reference IS NOT NULL;
-- At most one payment of an invoice is under way or has succeeded: a second attempt
-- waits for the first to fail, so an invoice is never paid twice.
CREATE UNIQUE INDEX payments_one_live_per_invoice
    ON payments (invoice_id) WHERE status IN ('pending', 'succeeded');
CREATE INDEX payments_pending ON payments (next_poll_at) WHERE status = 'pending';
CREATE INDEX payments_clinic ON payments (clinic_id, provider, created_at);

ALTER TABLE ledger_transactions
    ADD CONSTRAINT ledger_transactions_payment_fkey
    FOREIGN KEY (payment_id) REFERENCES payments (id);

-- Callbacks that changed (or confirmed) a payment, one row per provider, reference
-- and event: a duplicate finds its row and changes nothing.
CREATE TABLE payment_callbacks (
    provider text NOT NULL,
    reference text NOT NULL CHECK (length(reference) BETWEEN 1 AND 200),
    event text NOT NULL CHECK (length(event) BETWEEN 1 AND 64),
    payment_id uuid REFERENCES payments (id),
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, reference, event)
);

-- Idempotency keys of our own POSTs that create or move money (Stripe's semantics):
-- per caller and key, the request's fingerprint, and once finished its answer.
CREATE TABLE idempotency_keys (
    user_id uuid NOT NULL,
    key text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    operation text NOT NULL CHECK (length(operation) BETWEEN 1 AND 100),
    fingerprint bytea NOT NULL CHECK (length(fingerprint) = 32),
    -- NULL while the first request runs (held until locked_until).
    response_status integer CHECK (response_status BETWEEN 100 AND 599),
    response_body text CHECK (length(response_body) <= 65536),
    response_type text CHECK (length(response_type) <= 100),
    locked_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);

CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
