//! DSQL's map from IAM identities to database roles: `AWS IAM GRANT role TO 'arn'`,
//! `AWS IAM REVOKE role FROM 'arn'`, the `sys.iam_pg_role_mappings` view, and the check at
//! login that a `DbConnect` token's identity is mapped to the role it asks for.
//!
//! **Where the map lives.** In the private PostgreSQL (`dsql_pgx.iam_grants`, readable by
//! nobody but the superuser), keyed by the role's oid, so a grant is transactional like the
//! rest of the catalog, a renamed role keeps it and a dropped role's grants never reach a
//! new role of the same name. The statements are not PostgreSQL's: their words are found in
//! the statement's tokens ([`IamStatement::at`]) and the statement is run as a call of
//! `sys.dsql_pgx_aws_iam(..)`, a `SECURITY DEFINER` function that lets only `admin` change
//! the map (42501 for any other role, as DSQL refuses a non-admin role). The relay gives the
//! call's answer DSQL's command tag and no rows.
//!
//! **The login check.** `local` stands for one IAM identity, [`DEFAULT_ARN`] unless
//! `--iam-arn` names another: every token it verifies was signed with its keys, so every
//! login is that identity's. `admin` logs in with a `DbConnectAdmin` token and no grant; any
//! other role needs a grant to that ARN, else the login is refused as DSQL refuses it
//! (28000 `IAM authentication failed for user "<role>"`, the answer for every IAM refusal).
//! The check is one query on the new session itself (`sys.dsql_pgx_iam_login_allowed`),
//! answered before the client sees `AuthenticationOk`.
//!
//! Chosen where the reference is silent: the command tags are `AWS IAM GRANT` and `AWS IAM
//! REVOKE`; an ARN must look like an IAM role's or user's (`arn:<partition>:iam::<12
//! digits>:role/<name>` or `:user/<name>`), else 22023; granting an existing pair again and
//! revoking a missing one are not errors; `admin` itself cannot be mapped (42501); the
//! statements count as DDL in DSQL's transaction rules (the reference reports `GRANT` and
//! `REVOKE` do).

use pg_query::protobuf::{KeywordKind, ScanToken, Token};

/// The ARN `local`'s keys stand for unless `--iam-arn` says otherwise.
pub const DEFAULT_ARN: &str = "arn:aws:iam::000000000000:role/dsql-pgx-local";

/// Longest ARN IAM makes.
const MAX_ARN_LEN: usize = 2048;

/// Whether `arn` is an IAM role's or user's ARN (`arn:<aws partition>:iam::<12 digits>:`
/// `role/<path/name>` or `user/<path/name>`), as the grant function checks too.
pub fn is_iam_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [scheme, partition, service, region, account, resource] = parts[..] else {
        return false;
    };
    let name = resource
        .strip_prefix("role/")
        .or_else(|| resource.strip_prefix("user/"));
    scheme == "arn"
        && partition
            .strip_prefix("aws")
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
        && service == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && arn.len() <= MAX_ARN_LEN
        && name.is_some_and(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_/-".contains(&b))
        })
}

/// The map and its functions, run by the superuser at every start (idempotent).
pub(crate) const IAM_SQL: &str = r#"
SET search_path = pg_catalog;
CREATE TABLE IF NOT EXISTS dsql_pgx.iam_grants (
  iam_oid bigint GENERATED ALWAYS AS IDENTITY,
  arn text NOT NULL,
  pg_role_oid oid NOT NULL,
  grantor_pg_role_oid oid NOT NULL,
  PRIMARY KEY (pg_role_oid, arn)
);
REVOKE ALL ON dsql_pgx.iam_grants FROM PUBLIC;
CREATE OR REPLACE VIEW sys.iam_pg_role_mappings WITH (security_barrier) AS
  SELECT g.iam_oid, g.arn, g.pg_role_oid, r.rolname AS pg_role_name,
         g.grantor_pg_role_oid, gr.rolname AS grantor_pg_role_name
    FROM dsql_pgx.iam_grants g
    JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) g.pg_role_oid
    LEFT JOIN pg_catalog.pg_roles gr ON gr.oid OPERATOR(pg_catalog.=) g.grantor_pg_role_oid;
REVOKE ALL ON sys.iam_pg_role_mappings FROM PUBLIC;
GRANT SELECT ON sys.iam_pg_role_mappings TO PUBLIC;
CREATE OR REPLACE FUNCTION sys.dsql_pgx_aws_iam(op text, role_name text, iam_arn text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
  role_oid oid;
  caller oid;
BEGIN
  SELECT oid INTO caller FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) session_user;
  IF session_user OPERATOR(pg_catalog.<>) 'admin' THEN
    RAISE EXCEPTION 'permission denied to % IAM access', op USING ERRCODE = 'insufficient_privilege';
  END IF;
  SELECT oid INTO role_oid FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) role_name;
  IF role_oid IS NULL THEN
    RAISE EXCEPTION 'role "%" does not exist', role_name USING ERRCODE = 'undefined_object';
  END IF;
  IF role_name OPERATOR(pg_catalog.=) 'admin' THEN
    RAISE EXCEPTION 'permission denied to % IAM access for role "admin"', op
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF iam_arn IS NULL OR pg_catalog.length(iam_arn) OPERATOR(pg_catalog.>) 2048
     OR iam_arn OPERATOR(pg_catalog.!~)
     '^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/[A-Za-z0-9+=,.@_/-]+$' THEN
    RAISE EXCEPTION 'invalid IAM ARN "%"', iam_arn USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF op OPERATOR(pg_catalog.=) 'grant' THEN
    INSERT INTO dsql_pgx.iam_grants (arn, pg_role_oid, grantor_pg_role_oid)
      VALUES (iam_arn, role_oid, caller) ON CONFLICT DO NOTHING;
  ELSE
    DELETE FROM dsql_pgx.iam_grants g
     WHERE g.pg_role_oid OPERATOR(pg_catalog.=) role_oid AND g.arn OPERATOR(pg_catalog.=) iam_arn;
  END IF;
END
$fn$;
REVOKE ALL ON FUNCTION sys.dsql_pgx_aws_iam(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sys.dsql_pgx_aws_iam(text, text, text) TO PUBLIC;
CREATE OR REPLACE PROCEDURE sys.dsql_pgx_aws_iam_call(op text, role_name text, iam_arn text)
LANGUAGE sql SET search_path = pg_catalog AS $fn$ SELECT sys.dsql_pgx_aws_iam(op, role_name, iam_arn) $fn$;
REVOKE ALL ON PROCEDURE sys.dsql_pgx_aws_iam_call(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE sys.dsql_pgx_aws_iam_call(text, text, text) TO PUBLIC;
CREATE OR REPLACE FUNCTION sys.dsql_pgx_iam_login_allowed(iam_arn text)
RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $fn$
  SELECT EXISTS (SELECT FROM dsql_pgx.iam_grants g
                   JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) g.pg_role_oid
                  WHERE r.rolname OPERATOR(pg_catalog.=) session_user
                    AND g.arn OPERATOR(pg_catalog.=) iam_arn)
$fn$;
REVOKE ALL ON FUNCTION sys.dsql_pgx_iam_login_allowed(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sys.dsql_pgx_iam_login_allowed(text) TO PUBLIC;
"#;

/// The query the endpoint runs on a new session of a role other than `admin`: one row, one
/// boolean column, `t` when the role is mapped to `arn`.
pub(crate) fn login_check_query(arn: &str) -> String {
    format!(
        "SELECT sys.dsql_pgx_iam_login_allowed({})",
        quote_literal(arn)
    )
}

/// An SQL string literal of `text` (standard strings: only `'` is special).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Grant or revoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IamOp {
    /// `AWS IAM GRANT role TO 'arn'`.
    Grant,
    /// `AWS IAM REVOKE role FROM 'arn'`.
    Revoke,
}

impl IamOp {
    /// The command tag DSQL's answer carries.
    pub(crate) fn tag(self) -> &'static str {
        match self {
            Self::Grant => "AWS IAM GRANT",
            Self::Revoke => "AWS IAM REVOKE",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Revoke => "revoke",
        }
    }
}

/// One `AWS IAM` statement found in a text's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IamStatement {
    pub(crate) op: IamOp,
    /// Byte range of the statement's words in the text (from `AWS` to the ARN's literal).
    pub(crate) start: usize,
    pub(crate) end: usize,
    role: String,
    arn: String,
}

fn tok(t: &ScanToken) -> Token {
    Token::from_i32(t.token).unwrap_or(Token::Nul)
}

/// A role name as PostgreSQL reads the identifier `word`: quoted kept as written (with
/// `""` for `"`), unquoted folded to lower case, either cut to 63 bytes (on a character
/// boundary) as PostgreSQL cuts every identifier; `None` if it is no identifier.
fn identifier(word: &str, t: &ScanToken) -> Option<String> {
    identifier_untruncated(word, t).map(|mut name| {
        let mut end = name.len().min(MAX_IDENTIFIER);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
        name
    })
}

/// PostgreSQL's longest identifier, in bytes (NAMEDATALEN - 1).
const MAX_IDENTIFIER: usize = 63;

fn identifier_untruncated(word: &str, t: &ScanToken) -> Option<String> {
    let keyword = KeywordKind::from_i32(t.keyword_kind).unwrap_or(KeywordKind::NoKeyword);
    if let Some(inner) = word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        return (!inner.is_empty()).then(|| inner.replace("\"\"", "\""));
    }
    let plain = tok(t) == Token::Ident
        || matches!(
            keyword,
            KeywordKind::UnreservedKeyword
                | KeywordKind::ColNameKeyword
                | KeywordKind::TypeFuncNameKeyword
        );
    plain.then(|| word.to_ascii_lowercase())
}

/// A standard string literal's value (`'..'` with `''`); `None` for other spellings.
fn string_literal(word: &str) -> Option<String> {
    let inner = word.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace("''", "'"))
}

impl IamStatement {
    /// The `AWS IAM GRANT|REVOKE role TO|FROM 'arn'` statement starting at token `i` of
    /// `tokens` (comments removed) of `sql`, if it is one and ends there (at `;` or the end).
    pub(crate) fn at(sql: &str, tokens: &[&ScanToken], i: usize) -> Option<Self> {
        let text = |k: usize| {
            let t = tokens.get(i + k)?;
            sql.get(t.start as usize..t.end as usize)
        };
        let is_word = |k: usize, w: &str| text(k).is_some_and(|t| t.eq_ignore_ascii_case(w));
        if !is_word(0, "aws") || !is_word(1, "iam") {
            return None;
        }
        let (op, preposition) = match tok(tokens.get(i + 2)?) {
            Token::Grant => (IamOp::Grant, Token::To),
            Token::Revoke => (IamOp::Revoke, Token::From),
            _ => return None,
        };
        let role = identifier(text(3)?, tokens.get(i + 3)?)?;
        if tok(tokens.get(i + 4)?) != preposition {
            return None;
        }
        let literal = tokens.get(i + 5)?;
        if tok(literal) != Token::Sconst {
            return None;
        }
        let arn = string_literal(text(5)?)?;
        match tokens.get(i + 6).map(|t| tok(t)) {
            None | Some(Token::Ascii59) => {}
            Some(_) => return None,
        }
        Some(Self {
            op,
            start: tokens[i].start as usize,
            end: literal.end as usize,
            role,
            arn,
        })
    }

    /// The statement PostgreSQL runs instead (the relay names its one column).
    pub(crate) fn call(&self) -> String {
        format!(
            "SELECT sys.dsql_pgx_aws_iam('{}', {}, {})",
            self.op.word(),
            quote_literal(&self.role),
            quote_literal(&self.arn)
        )
    }
}

/// `call` (an [`IamStatement::call`]) as a procedure's `CALL`, which answers a Parse with
/// no rows.
pub(crate) fn as_procedure_call(call: &str) -> Option<String> {
    let args = call.strip_prefix("SELECT sys.dsql_pgx_aws_iam(")?;
    Some(format!("CALL sys.dsql_pgx_aws_iam_call({args}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(sql: &str) -> Option<IamStatement> {
        let scan = pg_query::scan(sql).ok()?;
        let tokens: Vec<&ScanToken> = scan.tokens.iter().collect();
        IamStatement::at(sql, &tokens, 0)
    }

    #[test]
    fn statements_are_read_from_their_tokens() {
        let s = found("AWS IAM GRANT app TO 'arn:aws:iam::111122223333:role/app'").unwrap();
        assert_eq!(s.op, IamOp::Grant);
        assert_eq!(
            s.call(),
            "SELECT sys.dsql_pgx_aws_iam('grant', 'app', 'arn:aws:iam::111122223333:role/app')"
        );
        let s = found("aws iam revoke \"My\"\"Role\" from 'it''s';").unwrap();
        assert_eq!(s.op, IamOp::Revoke);
        assert_eq!(
            s.call(),
            "SELECT sys.dsql_pgx_aws_iam('revoke', 'My\"Role', 'it''s')"
        );
        // A keyword that may name a role, folded.
        assert!(
            found("AWS IAM GRANT Data TO 'x'")
                .unwrap()
                .call()
                .contains("'data'")
        );
        for not_one in [
            "AWS IAM GRANT app FROM 'x'",
            "AWS IAM REVOKE app TO 'x'",
            "AWS IAM GRANT app TO x",
            "AWS IAM GRANT app TO 'x' extra",
            "AWS IAM GRANT app, b TO 'x'",
            "AWS IAM GRANT select TO 'x'",
            "AWS GRANT app TO 'x'",
            "IAM GRANT app TO 'x'",
            "AWS IAM GRANT app TO E'x'",
        ] {
            assert_eq!(found(not_one), None, "{not_one}");
        }
    }

    #[test]
    fn role_names_are_cut_to_63_bytes_as_postgresql_cuts_identifiers() {
        let long = "r".repeat(70);
        let s = found(&format!("AWS IAM GRANT {long} TO 'x'")).unwrap();
        assert!(
            s.call().contains(&format!("'{}'", "r".repeat(63))),
            "{}",
            s.call()
        );
        // Quoted, and not inside a character: "é" is two bytes, 62 + 2 > 63.
        let quoted = format!("\"{}éé\"", "q".repeat(62));
        let s = found(&format!("AWS IAM GRANT {quoted} TO 'x'")).unwrap();
        assert!(
            s.call().contains(&format!("'{}'", "q".repeat(62))),
            "{}",
            s.call()
        );
    }

    #[test]
    fn arns_of_iam_roles_and_users() {
        assert!(is_iam_arn(DEFAULT_ARN));
        assert!(is_iam_arn("arn:aws:iam::111122223333:user/ci/bot@x"));
        assert!(is_iam_arn("arn:aws-cn:iam::111122223333:role/r"));
        for bad in [
            "",
            "arn:aws:iam::11112222333:role/r",
            "arn:aws:iam:us-east-1:111122223333:role/r",
            "arn:aws:sts::111122223333:assumed-role/r/s",
            "arn:aws:iam::111122223333:role/",
            "arn:aws:iam::111122223333:group/g",
            "arn:aws:iam::111122223333:role/a b",
            "arn:aws:iam::111122223333:role/o'k",
        ] {
            assert!(!is_iam_arn(bad), "{bad}");
        }
    }

    #[test]
    fn the_login_check_quotes_the_arn() {
        assert_eq!(
            login_check_query("arn:aws:iam::1:role/o'k"),
            "SELECT sys.dsql_pgx_iam_login_allowed('arn:aws:iam::1:role/o''k')"
        );
    }
}
