-- Merchants' IVR flows uploaded over the API or the CLI (callback_server/flows_store.py).
-- Each upload that validates is a version: immutable once written. Which version a
-- merchant's call-backs use is one row of ivr_flow_active, flipped by one upsert; a
-- merchant without a row uses its configured file flow ([[merchants]] ivr_flow).

CREATE TABLE ivr_flow_versions (
    merchant_id  text        NOT NULL REFERENCES merchants,
    version      integer     NOT NULL CHECK (version > 0),
    name         text        NOT NULL,           -- the flow's own name
    source       text        NOT NULL,           -- the TOML text as uploaded
    sha256       text        NOT NULL,           -- of the text's UTF-8 bytes, hex
    filename     text        NOT NULL,           -- what its errors were named by
    created_by   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, version),
    UNIQUE (merchant_id, sha256)
);

CREATE FUNCTION ivr_flow_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ivr_flow_versions are immutable (% of %)', OLD.version, OLD.merchant_id
        USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER ivr_flow_versions_immutable BEFORE UPDATE OR DELETE ON ivr_flow_versions
    FOR EACH ROW EXECUTE FUNCTION ivr_flow_versions_immutable();

-- generation: from one sequence, so a process that has seen generation g reloads exactly
-- the rows above g (the safety sweep), whatever merchant they belong to.
CREATE SEQUENCE ivr_flow_generation;
CREATE TABLE ivr_flow_active (
    merchant_id   text        PRIMARY KEY,
    version       integer     NOT NULL,
    generation    bigint      NOT NULL DEFAULT nextval('ivr_flow_generation'),
    activated_by  text        NOT NULL,
    activated_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (merchant_id, version) REFERENCES ivr_flow_versions
);

-- Every process of the site LISTENs: an activation reaches them at commit.
CREATE FUNCTION ivr_flow_active_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ivr_flows', NEW.merchant_id || ' ' || NEW.generation);
    RETURN NULL;
END $$;
CREATE TRIGGER ivr_flow_active_notify AFTER INSERT OR UPDATE ON ivr_flow_active
    FOR EACH ROW EXECUTE FUNCTION ivr_flow_active_notify();

-- The flow each round of a call-back ran (support: which flow did the customer hear).
-- version NULL: the configured file flow. No foreign key: a record of what happened,
-- like the logs, it does not hold its request back from being purged.
CREATE TABLE callback_round_flows (
    callback_id  text        NOT NULL,
    attempt_no   integer     NOT NULL,
    merchant_id  text        NOT NULL,
    flow_name    text        NOT NULL,
    version      integer,
    started_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (callback_id, attempt_no)
);
