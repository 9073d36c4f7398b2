-- Workload for bench/decoders/run: a 10-column table with a primary key and
-- mixed types, and a procedure that writes inserts, updates and deletes in
-- many transactions.  Each transaction of :batch changes holds 50% inserts,
-- 33% updates and 17% deletes (updates and deletes hit the rows the
-- previous transaction inserted).
\set ON_ERROR_STOP on
CREATE TABLE public.bench_orders (
    id          bigint PRIMARY KEY,
    account_id  integer NOT NULL,
    amount      numeric(12,2) NOT NULL,
    ratio       double precision,
    active      boolean NOT NULL,
    status      text NOT NULL,
    note        text,
    ref         uuid NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz
);
CREATE PUBLICATION bench_pub FOR TABLE public.bench_orders;

CREATE PROCEDURE public.bench_rows(lo bigint, hi bigint) LANGUAGE sql AS $$
    INSERT INTO public.bench_orders
    SELECT g,
           (g * 7919) % 100000,
           round(((g * 104729) % 1000000) / 100.0, 2),
           ((g * 31) % 1000) / 7.0,
           g % 3 <> 0,
           (ARRAY['new','paid','shipped','cancelled'])[1 + g % 4],
           'order ' || g || ' for customer ' || ((g * 7919) % 100000) || ', deliver to dock ' || (g % 17),
           md5(g::text)::uuid,
           timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
           NULL
    FROM generate_series(lo, hi) g
$$;

-- Rows that exist before the slots are created (not decoded): the first
-- transaction's updates and deletes hit them.
CREATE PROCEDURE public.bench_seed(batch int) LANGUAGE sql AS $$
    CALL public.bench_rows(1, (batch / 2)::bigint)
$$;

-- ntx transactions of batch changes each.
CREATE PROCEDURE public.bench_workload(ntx int, batch int) LANGUAGE plpgsql AS $$
DECLARE
    ins int := batch / 2;
    upd int := batch / 3;
    del int := batch - batch / 2 - batch / 3;
    base bigint;
BEGIN
    FOR k IN 0 .. ntx - 1 LOOP
        base := k::bigint * ins;            -- previous transaction's rows: base+1 .. base+ins
        CALL public.bench_rows(base + ins + 1, base + 2 * ins);
        UPDATE public.bench_orders
           SET amount = amount + 1.25, ratio = ratio * 1.5, active = NOT active,
               status = 'updated', updated_at = created_at + interval '1 day'
         WHERE id BETWEEN base + 1 AND base + upd;
        DELETE FROM public.bench_orders
         WHERE id BETWEEN base + ins - del + 1 AND base + ins;
        COMMIT;
    END LOOP;
END
$$;
