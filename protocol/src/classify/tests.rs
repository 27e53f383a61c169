//! Byte tables: query text → the effect of each statement, rendered as short strings.

use super::*;

/// One effect as text: `set name = value`, `set local name = value`, `reset name`, `pin reason`…
fn render(e: &Effect<'_>) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match e {
        Effect::Other => "other".into(),
        Effect::Transaction(Tx::Begin { read_only: true }) => "begin read only".into(),
        Effect::Transaction(Tx::Begin { read_only: false }) => "begin".into(),
        Effect::Transaction(Tx::Commit) => "commit".into(),
        Effect::Transaction(Tx::Rollback) => "rollback".into(),
        Effect::Transaction(Tx::Savepoint) => "savepoint".into(),
        Effect::Transaction(Tx::ReleaseSavepoint) => "release savepoint".into(),
        Effect::Transaction(Tx::RollbackToSavepoint) => "rollback to savepoint".into(),
        Effect::Transaction(Tx::PrepareTransaction) => "prepare transaction".into(),
        Effect::Set { name, value, local } => {
            let scope = if *local { "local " } else { "" };
            match value {
                Value::Default => format!("set {scope}{name} default"),
                Value::Text(v) => format!("set {scope}{name} = {}", text(v)),
            }
        }
        Effect::Reset { name } => format!("reset {name}"),
        Effect::ResetAll => "reset all".into(),
        Effect::Discard(d) => format!("discard {d:?}").to_lowercase(),
        Effect::Execute { name } => format!("execute {name}"),
        Effect::Deallocate { name: Some(name) } => format!("deallocate {name}"),
        Effect::Deallocate { name: None } => "deallocate all".into(),
        Effect::Pin(reason) => format!("pin {reason}"),
    }
}

fn effects(sql: &[u8]) -> Vec<String> {
    session_effects(sql).map(|e| render(&e)).collect()
}

#[track_caller]
fn check(table: &[(&str, &[&str])]) {
    for (sql, want) in table {
        assert_eq!(effects(sql.as_bytes()), *want, "for {sql:?}");
    }
}

#[test]
fn set_forms_report_the_setting_and_its_value_as_written() {
    check(&[
        (
            "SET search_path = a, \"$user\"",
            &["set search_path = a, \"$user\""],
        ),
        ("set Search_Path to 'A'", &["set search_path = 'A'"]),
        ("SET SESSION work_mem TO '64MB'", &["set work_mem = '64MB'"]),
        ("SET myapp.user_id = 42", &["set myapp.user_id = 42"]),
        ("SET \"MyApp\" . \"User\" = 'x'", &["set MyApp.User = 'x'"]),
        (
            "SET statement_timeout TO DEFAULT",
            &["set statement_timeout default"],
        ),
        (
            "SET statement_timeout = 'default'",
            &["set statement_timeout = 'default'"],
        ),
        ("SET x = -1", &["set x = -1"]),
        ("SET x=-1", &["set x = -1"]),
        (
            "SET TIME ZONE 'Europe/Paris'",
            &["set timezone = 'Europe/Paris'"],
        ),
        ("set time zone local", &["set timezone default"]),
        ("SET TIME ZONE DEFAULT", &["set timezone default"]),
        ("SET TIME ZONE -7", &["set timezone = -7"]),
        (
            "SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE",
            &["pin unsure"],
        ),
        ("SET SCHEMA 'app'", &["set search_path = 'app'"]),
        ("SET NAMES 'UTF8'", &["set client_encoding = 'UTF8'"]),
        ("SET NAMES", &["set client_encoding default"]),
        ("SET XML OPTION DOCUMENT", &["set xmloption = DOCUMENT"]),
        ("SET timezone = 'UTC'", &["set timezone = 'UTC'"]),
    ]);
}

#[test]
fn set_local_and_transaction_scoped_settings_are_local() {
    check(&[
        ("SET LOCAL search_path = a", &["set local search_path = a"]),
        ("SET LOCAL TIME ZONE 'UTC'", &["set local timezone = 'UTC'"]),
        (
            "SET transaction_read_only = on",
            &["set local transaction_read_only = on"],
        ),
        ("SET LOCAL ROLE admin", &["set local role = admin"]),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", &["other"]),
        ("SET TRANSACTION SNAPSHOT '000003A1-1'", &["other"]),
        ("SET CONSTRAINTS ALL DEFERRED", &["other"]),
    ]);
    let local = session_effects(b"SET LOCAL a = 1").next().unwrap();
    assert!(matches!(local, Effect::Set { local: true, .. }));
    assert!(!session_effects(b"SET LOCAL a = 1; SELECT 1").affects_session());
}

#[test]
fn reset_and_discard_are_reported() {
    check(&[
        ("RESET search_path", &["reset search_path"]),
        ("reset MyApp.X", &["reset myapp.x"]),
        ("RESET TIME ZONE", &["reset timezone"]),
        ("RESET ALL", &["reset all"]),
        ("RESET TRANSACTION ISOLATION LEVEL", &["other"]),
        ("DISCARD ALL", &["discard all"]),
        ("discard plans", &["discard plans"]),
        ("DISCARD SEQUENCES", &["discard sequences"]),
        ("DISCARD TEMP", &["discard temp"]),
        ("DISCARD TEMPORARY", &["discard temp"]),
        ("DISCARD EVERYTHING", &["pin unsure"]),
    ]);
    // Quoted, `all` is a setting's name (which Postgres will not find).
    let quoted = session_effects(b"RESET \"all\"").next();
    assert!(matches!(quoted, Some(Effect::Reset { name }) if name.raw() == b"\"all\""));
}

#[test]
fn roles_and_authorization_pin_outside_set_local() {
    check(&[
        ("SET ROLE admin", &["pin set_role"]),
        ("SET SESSION ROLE admin", &["pin set_role"]),
        ("SET role = 'admin'", &["pin set_role"]),
        ("SET ROLE NONE", &["pin set_role"]),
        ("RESET ROLE", &["pin set_role"]),
        (
            "SET SESSION AUTHORIZATION 'bob'",
            &["pin session_authorization"],
        ),
        (
            "SET SESSION AUTHORIZATION DEFAULT",
            &["pin session_authorization"],
        ),
        (
            "SET session_authorization = bob",
            &["pin session_authorization"],
        ),
        (
            "RESET SESSION AUTHORIZATION",
            &["pin session_authorization"],
        ),
        (
            "SET LOCAL SESSION AUTHORIZATION bob",
            &["set local session_authorization = bob"],
        ),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            &["pin session_characteristics"],
        ),
    ]);
}

#[test]
fn set_forms_that_are_not_understood_pin_as_unsure() {
    check(&[
        ("SET search_path FROM CURRENT", &["pin unsure"]),
        ("SET", &["pin unsure"]),
        ("SET LOCAL", &["pin unsure"]),
        ("SET a =", &["pin unsure"]),
        ("SET a b", &["pin unsure"]),
        ("SET 'a' = 1", &["pin unsure"]),
        ("SET a. = 1", &["pin unsure"]),
        ("RESET", &["pin unsure"]),
        ("RESET a b", &["pin unsure"]),
    ]);
}

#[test]
fn statements_that_cannot_move_pin_with_their_reason() {
    check(&[
        ("LISTEN jobs", &["pin listen"]),
        ("UNLISTEN *", &["other"]),
        ("NOTIFY jobs, 'x'", &["other"]),
        ("LOAD 'auto_explain'", &["pin load"]),
        ("DO $$ BEGIN PERFORM 1; END $$", &["pin do_block"]),
        ("PREPARE q (int) AS SELECT $1", &["pin prepare"]),
        ("PREPARE transaction AS SELECT 1", &["pin prepare"]),
        ("PREPARE TRANSACTION 'gid-1'", &["prepare transaction"]),
        ("EXECUTE q(1)", &["execute q"]),
        ("EXECUTE \"Q\"", &["execute Q"]),
        ("EXECUTE q(pg_advisory_lock(1))", &["pin advisory_lock"]),
        ("DEALLOCATE q", &["deallocate q"]),
        ("DEALLOCATE PREPARE Q", &["deallocate q"]),
        ("DEALLOCATE ALL", &["deallocate all"]),
        ("DEALLOCATE prepare", &["deallocate prepare"]),
        ("DEALLOCATE", &["pin unsure"]),
    ]);
}

#[test]
fn advisory_locks_pin_only_when_called_and_session_scoped() {
    check(&[
        ("SELECT pg_advisory_lock(1)", &["pin advisory_lock"]),
        (
            "select PG_TRY_ADVISORY_LOCK_SHARED (1, 2)",
            &["pin advisory_lock"],
        ),
        (
            "SELECT pg_catalog.pg_advisory_lock_shared(1)",
            &["pin advisory_lock"],
        ),
        (
            "SELECT pg_try_advisory_lock /* c */ (1)",
            &["pin advisory_lock"],
        ),
        (
            "SELECT x FROM t WHERE pg_try_advisory_lock(id)",
            &["pin advisory_lock"],
        ),
        ("SELECT \"pg_advisory_lock\"(1)", &["pin advisory_lock"]),
        ("SELECT pg_advisory_xact_lock(1)", &["other"]),
        ("SELECT pg_try_advisory_xact_lock_shared(1)", &["other"]),
        ("SELECT pg_advisory_unlock(1)", &["other"]),
        // A column of that name is not a call.
        ("SELECT \"pg_advisory_lock\" FROM t", &["other"]),
        ("SELECT pg_advisory_lock FROM t", &["other"]),
        ("SELECT 'pg_advisory_lock(1)'", &["other"]),
    ]);
}

#[test]
fn set_config_pins_unless_its_third_argument_is_literally_true() {
    check(&[
        ("SELECT set_config('a.b', 'x', false)", &["pin set_config"]),
        ("SELECT set_config('a.b', 'x', $1)", &["pin set_config"]),
        ("SELECT set_config('a.b', f(1, 2), true)", &["other"]),
        ("SELECT pg_catalog.set_config('a.b', 'x', TRUE)", &["other"]),
        ("SELECT set_config('a.b', 'x', 'on')", &["other"]),
        (
            "SELECT set_config('a.b', 'x', true AND x)",
            &["pin set_config"],
        ),
        ("SELECT set_config('a.b', 'x', (true))", &["pin set_config"]),
        ("SELECT set_config('a.b', 'x')", &["pin set_config"]),
        ("SELECT set_config('a.b', 'x', true", &["pin set_config"]),
        (
            "UPDATE pg_settings SET setting = 'x' WHERE name = 'a'",
            &["pin set_config"],
        ),
        ("SELECT setting FROM pg_settings", &["other"]),
    ]);
}

#[test]
fn temporary_objects_pin_unless_dropped_at_commit() {
    check(&[
        ("CREATE TEMP TABLE t (a int)", &["pin temp_table"]),
        (
            "create local temporary table t (a int)",
            &["pin temp_table"],
        ),
        ("CREATE GLOBAL TEMP SEQUENCE s", &["pin temp_table"]),
        (
            "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
            &["pin temp_table"],
        ),
        (
            "CREATE TEMP RECURSIVE VIEW v (n) AS SELECT 1",
            &["pin temp_table"],
        ),
        ("CREATE TEMPORARY TABLE t AS SELECT 1", &["pin temp_table"]),
        (
            "CREATE TEMP TABLE t (a int) ON COMMIT DELETE ROWS",
            &["pin temp_table"],
        ),
        ("CREATE TEMP TABLE t (a int) ON COMMIT DROP", &["other"]),
        ("CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1", &["other"]),
        (
            "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
            &["pin temp_table"],
        ),
        ("SELECT * INTO TEMP t FROM x", &["pin temp_table"]),
        (
            "SELECT * INTO TEMPORARY TABLE t FROM x",
            &["pin temp_table"],
        ),
        ("SELECT * INTO LOCAL TEMP \"T\" FROM x", &["pin temp_table"]),
        (
            "CREATE FUNCTION pg_temp.f() RETURNS int AS 'select 1' LANGUAGE sql",
            &["pin temp_table"],
        ),
        ("CREATE TABLE pg_temp.t (a int)", &["pin temp_table"]),
        // `temp` as a table's name.
        ("SELECT 1 INTO temp FROM x", &["other"]),
        ("INSERT INTO temp VALUES (1)", &["other"]),
        (
            "MERGE INTO temp t USING s ON true WHEN MATCHED THEN DELETE",
            &["other"],
        ),
        ("CREATE UNLOGGED TABLE t (a int)", &["other"]),
        ("CREATE TABLE temp (a int)", &["other"]),
    ]);
}

#[test]
fn only_cursors_with_hold_pin() {
    check(&[
        (
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            &["pin with_hold_cursor"],
        ),
        (
            "declare c no scroll cursor with hold for select 1",
            &["pin with_hold_cursor"],
        ),
        ("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", &["other"]),
        ("DECLARE c CURSOR FOR SELECT 1", &["other"]),
        (
            "DECLARE c CURSOR FOR WITH hold AS (SELECT 1) SELECT * FROM hold",
            &["other"],
        ),
        (
            "DECLARE c CURSOR FOR SELECT pg_advisory_lock(1)",
            &["pin advisory_lock"],
        ),
    ]);
}

#[test]
fn transaction_control_is_reported() {
    check(&[
        ("BEGIN", &["begin"]),
        ("begin read only", &["begin read only"]),
        (
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
            &["begin read only"],
        ),
        ("BEGIN READ ONLY, READ WRITE", &["begin"]),
        ("COMMIT", &["commit"]),
        ("END WORK", &["commit"]),
        ("COMMIT AND CHAIN", &["commit"]),
        ("ROLLBACK", &["rollback"]),
        ("ABORT", &["rollback"]),
        ("ROLLBACK TO SAVEPOINT s", &["rollback to savepoint"]),
        ("ROLLBACK WORK TO s", &["rollback to savepoint"]),
        ("SAVEPOINT s", &["savepoint"]),
        ("RELEASE SAVEPOINT s", &["release savepoint"]),
        ("COMMIT PREPARED 'gid'", &["other"]),
        ("ROLLBACK PREPARED 'gid'", &["other"]),
    ]);
}

#[test]
fn quotes_and_comments_hide_what_is_inside_them() {
    check(&[
        ("SELECT 'SET search_path = x'", &["other"]),
        ("SELECT $$ LISTEN x $$", &["other"]),
        ("SELECT $tag$ $$ ; LISTEN x $tag$", &["other"]),
        ("SELECT E'it\\'s; LISTEN x'", &["other"]),
        ("SELECT 'it''s; LISTEN x'", &["other"]),
        ("SELECT \"LISTEN x; \"\"\" FROM t", &["other"]),
        ("SELECT 1 -- ; LISTEN x", &["other"]),
        ("SELECT 1 /* ; /* LISTEN x; */ ; */", &["other"]),
        ("/* LISTEN x */ SELECT 1", &["other"]),
        (
            "SET /* x */ search_path /* y */ = /* z */ a",
            &["set search_path = a"],
        ),
        ("SET search_path = a -- trailing", &["set search_path = a"]),
        ("-- c\nLISTEN x", &["pin listen"]),
        // In a plain string a backslash is just a byte: the quote after it ends the string.
        ("SELECT 'a\\'; LISTEN x", &["other", "pin listen"]),
        // An E-string continued on the next line keeps its escapes.
        (
            "SELECT E'a'\n'\\''; LISTEN x; --'",
            &["other", "pin listen"],
        ),
    ]);
}

#[test]
fn standard_conforming_strings_off_makes_backslash_escape_in_plain_strings() {
    let off = Syntax {
        standard_conforming_strings: false,
    };
    let run = |sql: &[u8]| -> Vec<String> {
        session_effects_with(sql, off).map(|e| render(&e)).collect()
    };
    assert_eq!(
        run(b"SELECT 'a\\'; LISTEN x'; SELECT 1"),
        ["other", "other"]
    );
    // A bit string continued on the next line is still a bit string: no escapes.
    assert_eq!(
        run(b"SELECT B'1'\n'\\'; LISTEN x; --'"),
        ["other", "pin listen"]
    );
}

#[test]
fn multi_statement_strings_have_one_effect_per_statement() {
    check(&[
        (
            "SET a = 1; SELECT 1; LISTEN c",
            &["set a = 1", "other", "pin listen"],
        ),
        ("SET a = 1;;; SET b = 2;", &["set a = 1", "set b = 2"]),
        ("", &[]),
        (" ; -- nothing\n", &[]),
        (
            "CREATE FUNCTION f() RETURNS void AS $$ LISTEN x; SELECT pg_advisory_lock(1) $$ \
             LANGUAGE sql; SELECT f()",
            &["other", "other"],
        ),
    ]);
}

#[test]
fn unterminated_text_pins_as_unsure() {
    check(&[
        ("SELECT 'abc", &["pin unsure"]),
        ("SELECT 1; SET a = 'x", &["other", "pin unsure"]),
        ("SELECT \"abc", &["pin unsure"]),
        ("SELECT $$ abc", &["pin unsure"]),
        ("SELECT E'abc\\'", &["pin unsure"]),
        ("SELECT 1 /* /* */", &["pin unsure"]),
        ("/*", &["pin unsure"]),
    ]);
}

#[test]
fn a_pgbench_query_has_no_session_effect() {
    let sql = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
    assert_eq!(effects(sql), ["other"]);
    assert!(!session_effects(sql).affects_session());
    assert!(
        !session_effects(b"UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2")
            .affects_session()
    );
    assert!(session_effects(b"SELECT 1; SET a = 1").affects_session());
}

#[test]
fn reasons_have_distinct_stable_labels() {
    let mut labels: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), Reason::ALL.len());
    assert_eq!(Reason::WithHoldCursor.to_string(), "with_hold_cursor");
}

#[test]
fn set_names_and_values_borrow_from_the_query_text() {
    let sql = b"SET LOCAL myapp.Id = 'x', 'y' ; SELECT 1";
    let Some(Effect::Set { name, value, local }) = session_effects(sql).next() else {
        panic!("not a set");
    };
    assert!(local);
    assert_eq!(name.raw(), b"myapp.Id");
    assert!(name.eq_ignore_ascii_case(b"MYAPP.ID"));
    assert_eq!(value, Value::Text(b"'x', 'y'"));
}

#[test]
fn plain_selects_are_told_apart_without_tokenizing() {
    // The scan takes eight bytes at a time: what it looks for is found at every offset, in a
    // full run of eight and in the tail.
    for pad in 0..20 {
        let pad = " ".repeat(pad);
        for (bad, good) in [
            ("into t", "pinto"),
            ("pg_temp.t", "xpg_temp"),
            ("f(1)", "f"),
            ("'a", "'a'"),
            ("$$", "$1"),
        ] {
            let bad = format!("SELECT x{pad} {bad}");
            let good = format!("SELECT x{pad} {good}");
            assert!(!plain_select(bad.as_bytes()), "{bad}");
            assert!(plain_select(good.as_bytes()), "{good}");
        }
    }
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
        "select * from t where a = $1 and b = 'it''s'",
        "  SELECT\n  x, y FROM t FOR UPDATE ;  ",
        "select*from t",
        // `into` and `pg_temp` inside a longer name are not the words.
        "select pinto, hintpg_temp from points",
    ] {
        assert!(plain_select(sql.as_bytes()), "{sql}");
        assert_eq!(effects(sql.as_bytes()), ["other"], "{sql}");
    }
    for sql in [
        "SELECT pg_advisory_lock(1)",
        "SELECT set_config('a', 'b', false)",
        "SELECT 1 INTO TEMP t",
        "SELECT * FROM pg_temp.t",
        "SELECT * FROM x,pg_temp.t",
        "SELECT 1into t",
        "SELECT 1_into temp t",
        "SELECT 1_pg_temp.t",
        "select a\tinto t from u",
        "SELECT 1; SET search_path = x",
        "SELECT 'open",
        "SELECT $$x$$",
        "SELECT 1 -- (",
        "SELECT /* */ 1",
        "SELECT \"q\" FROM t",
        "SELECTED",
        "UPDATE t SET a = 1",
        "",
    ] {
        assert!(!plain_select(sql.as_bytes()), "{sql}");
    }
}
