-- The consultation gate without a round trip of its own: signaling's room-access
-- query asks this function for the clinic's gate, so a join in a clinic that does
-- not ask for payment first costs no extra statement. Only under 'pay_before' does
-- the payments service look at the invoice (teleconsult/payments/service.py).
-- The function hides the payments table from signaling's SQL.
CREATE FUNCTION clinic_payment_gate(clinic uuid) RETURNS text
    LANGUAGE sql STABLE
    AS $$
        SELECT coalesce(
            (SELECT gate FROM clinic_payment_settings WHERE clinic_id = clinic), 'none'
        )
    $$;
