-- Payments (issue 15), part 1: clinic payment settings, invoices with a gapless
-- number per clinic and year, and the double-entry ledger (teleconsult/payments/).
--
-- Amounts are bigint in the currency's minor unit (XOF: francs, KES: cents), never
-- floats. In the ledger a positive amount is a debit, a negative one a credit.

CREATE TABLE clinic_payment_settings (
    clinic_id uuid PRIMARY KEY REFERENCES clinics (id),
    -- pay_before: joining a consultation needs a paid invoice; pay_after and none: never.
    gate text NOT NULL DEFAULT 'none' CHECK (gate IN ('pay_before', 'pay_after', 'none')),
    tax_label text CHECK (length(tax_label) BETWEEN 1 AND 40),
    -- Basis points: 1800 is 18 %.
    tax_rate_bp integer NOT NULL DEFAULT 0 CHECK (tax_rate_bp BETWEEN 0 AND 10000),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT clinic_payment_settings_tax_named CHECK (tax_rate_bp = 0 OR tax_label IS NOT NULL)
);

-- Gapless: the counter row is taken with the booking's transaction and released at
-- its commit, so a rolled-back booking gives its number back. Bookings of one clinic
-- therefore take their numbers one after another (a row lock held for one statement).
CREATE TABLE invoice_counters (
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    year integer NOT NULL CHECK (year BETWEEN 2000 AND 9999),
    last_number integer NOT NULL CHECK (last_number > 0),
    PRIMARY KEY (clinic_id, year)
);

CREATE TABLE invoices (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    -- An invoice outlives a deleted appointment (accounting records).
    appointment_id uuid UNIQUE REFERENCES appointments (id) ON DELETE SET NULL,
    patient_id uuid NOT NULL,
    number text NOT NULL CHECK (number ~ '^INV-[0-9]{4}-[0-9]{6,}$'),
    currency char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    subtotal bigint NOT NULL CHECK (subtotal >= 0),
    tax bigint NOT NULL DEFAULT 0 CHECK (tax >= 0),
    total bigint NOT NULL CHECK (total > 0),
    paid bigint NOT NULL DEFAULT 0 CHECK (paid >= 0),
    refunded bigint NOT NULL DEFAULT 0 CHECK (refunded >= 0),
    waived bigint NOT NULL DEFAULT 0 CHECK (waived >= 0),
    status text NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'paid', 'partially_refunded', 'refunded', 'void')),
    void_reason text CHECK (length(void_reason) <= 500),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT invoices_number_per_clinic UNIQUE (clinic_id, number),
    CONSTRAINT invoices_total CHECK (total = subtotal + tax),
    CONSTRAINT invoices_not_overpaid CHECK (paid + waived <= total),
    CONSTRAINT invoices_refund_le_paid CHECK (refunded <= paid)
);

CREATE INDEX invoices_clinic ON invoices (clinic_id, created_at DESC, id DESC);
CREATE INDEX invoices_patient ON invoices (patient_id, created_at DESC, id DESC);

CREATE TABLE invoice_lines (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    invoice_id uuid NOT NULL REFERENCES invoices (id),
    position smallint NOT NULL CHECK (position > 0),
    kind text NOT NULL CHECK (kind IN ('fee', 'tax')),
    description text NOT NULL CHECK (length(description) BETWEEN 1 AND 200),
    amount bigint NOT NULL CHECK (amount >= 0),
    UNIQUE (invoice_id, position)
);

-- The ledger. A transaction groups postings that balance to zero per currency
-- (checked at commit by the constraint trigger below). Refunds, voids and waivers
-- are new transactions; `reverses` links a refund or void to what it reverses.
CREATE TABLE ledger_transactions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    kind text NOT NULL
        CHECK (kind IN ('invoice', 'payment', 'refund', 'waiver', 'void')),
    invoice_id uuid REFERENCES invoices (id),
    payment_id uuid,
    reverses uuid REFERENCES ledger_transactions (id),
    memo text CHECK (length(memo) <= 500),
    created_by uuid,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX ledger_transactions_invoice ON ledger_transactions (invoice_id);
CREATE INDEX ledger_transactions_payment ON ledger_transactions (payment_id);
-- One invoice posting per invoice, and (0020) one credit per payment: by the database.
CREATE UNIQUE INDEX ledger_one_invoice_posting
    ON ledger_transactions (invoice_id) WHERE kind = 'invoice';
CREATE UNIQUE INDEX ledger_one_void_per_invoice
    ON ledger_transactions (invoice_id) WHERE kind = 'void';
CREATE UNIQUE INDEX ledger_one_credit_per_payment
    ON ledger_transactions (payment_id) WHERE kind = 'payment';

CREATE TABLE ledger_postings (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id uuid NOT NULL REFERENCES ledger_transactions (id),
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    -- receivables, cash, revenue, refunds (contra-revenue), fees_waived, tax_payable,
    -- clearing:<provider> (money the provider holds for the clinic).
    account text NOT NULL CHECK (
        account ~ '^(receivables|cash|revenue|refunds|fees_waived|tax_payable|clearing:[a-z][a-z0-9_]{0,30})$'
    ),
    currency char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount bigint NOT NULL CHECK (amount <> 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX ledger_postings_transaction ON ledger_postings (transaction_id);
CREATE INDEX ledger_postings_account ON ledger_postings (clinic_id, account, currency);

-- Balanced per transaction and currency, checked at COMMIT (deferred), so the
-- postings of a transaction may be inserted one by one in any order.
CREATE FUNCTION ledger_check_balanced() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    off record;
BEGIN
    SELECT currency, sum(amount) AS total INTO off
    FROM ledger_postings
    WHERE transaction_id = NEW.transaction_id
    GROUP BY currency
    HAVING sum(amount) <> 0
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % does not balance in %: off by %',
            NEW.transaction_id, off.currency, off.total
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF (SELECT clinic_id FROM ledger_transactions WHERE id = NEW.transaction_id)
        IS DISTINCT FROM NEW.clinic_id THEN
        RAISE EXCEPTION 'ledger posting of another clinic than its transaction'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER ledger_postings_balanced
    AFTER INSERT ON ledger_postings
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();

-- Immutable: the runtime role has only SELECT and INSERT (core/migrations.py), and
-- these refuse the owner too.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER ledger_postings_immutable BEFORE UPDATE OR DELETE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_postings_no_truncate BEFORE TRUNCATE ON ledger_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_transactions_immutable BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_transactions_no_truncate BEFORE TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Booking raises the invoice in the booking's own transaction (the booking is one
-- statement, scheduling/booking_store.py; this trigger adds no round trip): the
-- doctor's fee as a line, the clinic's tax as a second, the gapless number, the
-- ledger posting (receivables against revenue and tax) and the audit event.
-- A doctor without a fee raises no invoice.
CREATE FUNCTION payments_invoice_for_booking() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    fee bigint;
    cur char(3);
    rate integer;
    label text;
    tax_amount bigint;
    yr integer;
    n integer;
    inv uuid := gen_random_uuid();
    txn uuid := gen_random_uuid();
    number text;
    actor_role text;
BEGIN
    SELECT p.fee_cents, p.currency INTO fee, cur
    FROM doctor_profiles p WHERE p.user_id = NEW.doctor_id;
    IF fee IS NULL OR fee <= 0 THEN
        RETURN NULL;
    END IF;
    SELECT s.tax_rate_bp, s.tax_label INTO rate, label
    FROM clinic_payment_settings s WHERE s.clinic_id = NEW.clinic_id;
    rate := coalesce(rate, 0);
    -- Round half up, in integers.
    tax_amount := (fee * rate + 5000) / 10000;
    SELECT extract(year FROM now() AT TIME ZONE c.timezone)::integer INTO yr
    FROM clinics c WHERE c.id = NEW.clinic_id;
    INSERT INTO invoice_counters AS ic (clinic_id, year, last_number)
    VALUES (NEW.clinic_id, yr, 1)
    ON CONFLICT (clinic_id, year) DO UPDATE SET last_number = ic.last_number + 1
    RETURNING last_number INTO n;
    number := 'INV-' || yr::text || '-' || lpad(n::text, 6, '0');
    INSERT INTO invoices (id, clinic_id, appointment_id, patient_id, number, currency,
                          subtotal, tax, total)
    VALUES (inv, NEW.clinic_id, NEW.id, NEW.patient_id, number, cur,
            fee, tax_amount, fee + tax_amount);
    INSERT INTO invoice_lines (invoice_id, position, kind, description, amount)
    VALUES (inv, 1, 'fee', 'Consultation (' || NEW.service::text || ')', fee);
    IF tax_amount > 0 THEN
        INSERT INTO invoice_lines (invoice_id, position, kind, description, amount)
        VALUES (inv, 2, 'tax', label || ' ' || (rate / 100.0)::numeric(6, 2)::text || ' %',
                tax_amount);
    END IF;
    INSERT INTO ledger_transactions (id, clinic_id, kind, invoice_id, memo, created_by)
    VALUES (txn, NEW.clinic_id, 'invoice', inv, number, NEW.created_by);
    INSERT INTO ledger_postings (transaction_id, clinic_id, account, currency, amount)
    VALUES (txn, NEW.clinic_id, 'receivables', cur, fee + tax_amount),
           (txn, NEW.clinic_id, 'revenue', cur, -fee);
    IF tax_amount > 0 THEN
        INSERT INTO ledger_postings (transaction_id, clinic_id, account, currency, amount)
        VALUES (txn, NEW.clinic_id, 'tax_payable', cur, -tax_amount);
    END IF;
    SELECT u.role::text INTO actor_role FROM users u WHERE u.id = NEW.created_by;
    INSERT INTO audit_intake (actor_id, actor_role, clinic_id, action, object_type, object_id,
                              outcome, detail)
    VALUES (NEW.created_by, actor_role, NEW.clinic_id, 'invoice.create', 'invoice', inv::text,
            'success', jsonb_build_object(
                'patient_id', NEW.patient_id::text, 'appointment_id', NEW.id::text,
                'number', number, 'total', fee + tax_amount, 'currency', cur));
    RETURN NULL;
END;
$$;

CREATE TRIGGER appointments_raise_invoice AFTER INSERT ON appointments
    FOR EACH ROW EXECUTE FUNCTION payments_invoice_for_booking();

-- A cancelled appointment voids its invoice while nothing was paid: a reversing
-- ledger transaction linked to the invoice posting, and the audit event. A paid
-- invoice stays; the front desk refunds it.
CREATE FUNCTION payments_void_on_cancel() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    inv record;
    txn uuid := gen_random_uuid();
    original uuid;
BEGIN
    SELECT * INTO inv FROM invoices
    WHERE appointment_id = NEW.id AND status = 'open' AND paid = 0 AND waived = 0
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE invoices SET status = 'void', void_reason = 'appointment cancelled',
                        updated_at = now()
    WHERE id = inv.id;
    SELECT id INTO original FROM ledger_transactions
    WHERE invoice_id = inv.id AND kind = 'invoice';
    INSERT INTO ledger_transactions (id, clinic_id, kind, invoice_id, reverses, memo)
    VALUES (txn, inv.clinic_id, 'void', inv.id, original, inv.number);
    INSERT INTO ledger_postings (transaction_id, clinic_id, account, currency, amount)
    SELECT txn, p.clinic_id, p.account, p.currency, -p.amount
    FROM ledger_postings p WHERE p.transaction_id = original;
    INSERT INTO audit_intake (clinic_id, action, object_type, object_id, outcome, detail)
    VALUES (inv.clinic_id, 'invoice.void', 'invoice', inv.id::text, 'success',
            jsonb_build_object('patient_id', inv.patient_id::text,
                               'appointment_id', NEW.id::text, 'reason', 'appointment cancelled'));
    RETURN NULL;
END;
$$;

CREATE TRIGGER appointments_void_invoice AFTER UPDATE OF status ON appointments
    FOR EACH ROW WHEN (NEW.status = 'cancelled' AND OLD.status <> 'cancelled')
    EXECUTE FUNCTION payments_void_on_cancel();
