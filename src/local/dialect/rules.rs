//! DSQL's rules for one parsed statement, apart from any transaction: what it refuses (with
//! its SQLSTATE and words, ../shared/reference/dsql-dialect.md §§2–10) and, for what it
//! accepts, the kind the transaction rules count ([`Kind`]).
//!
//! Messages name PostgreSQL's own parse nodes, as DSQL's do, so the rules branch on the
//! real parse tree. Where the reference is silent the choice is marked "(chosen)" here.

use pg_query::NodeEnum;
use pg_query::protobuf::{self, AlterTableType as At, ConstrType, Node};

use crate::local::wire::is_utf8_encoding;

/// SQLSTATE of every dialect refusal unless another is given.
pub(crate) const FEATURE_NOT_SUPPORTED: &str = "0A000";

/// A statement DSQL refuses: the ErrorResponse it answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// SQLSTATE.
    pub(crate) code: &'static str,
    /// The `M` field, exactly.
    pub(crate) message: String,
    /// The `D` field, when DSQL sends one.
    pub(crate) detail: Option<String>,
}

impl Refusal {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: None,
        }
    }

    pub(crate) fn unsupported(message: impl Into<String>) -> Self {
        Self::new(FEATURE_NOT_SUPPORTED, message)
    }
}

/// What an accepted statement is to the transaction rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `ROLLBACK` and their spellings: the transaction ends.
    End,
    /// A schema change (one per transaction, never with DML).
    Ddl,
    /// `INSERT`, `UPDATE`, `DELETE`.
    Dml,
    /// Anything else (reads, `SET`, `SHOW`, ...).
    #[default]
    Other,
}

/// The verdict on one statement.
pub(crate) type Verdict = Result<Kind, Refusal>;

fn unsupported_statement(name: &str) -> Verdict {
    Err(Refusal::unsupported(format!(
        "unsupported statement: {name}"
    )))
}

/// The last name of a qualified name list (`pg_catalog.int4` → `int4`).
fn last_name(names: &[Node]) -> Option<&str> {
    names.iter().rev().find_map(|n| match &n.node {
        Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
        _ => None,
    })
}

fn def_elem_string(arg: Option<&Node>) -> Option<String> {
    match arg?.node.as_ref()? {
        NodeEnum::String(s) => Some(s.sval.clone()),
        NodeEnum::AConst(c) => match c.val.as_ref()? {
            protobuf::a_const::Val::Sval(s) => Some(s.sval.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn def_elem_int(arg: Option<&Node>) -> Option<i64> {
    match arg?.node.as_ref()? {
        NodeEnum::Integer(i) => Some(i64::from(i.ival)),
        NodeEnum::Float(f) => f.fval.parse().ok(),
        NodeEnum::AConst(c) => match c.val.as_ref()? {
            protobuf::a_const::Val::Ival(i) => Some(i64::from(i.ival)),
            protobuf::a_const::Val::Fval(f) => f.fval.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// Options as `(name, node)` pairs from a list of DefElems.
fn def_elems(options: &[Node]) -> impl Iterator<Item = (&str, Option<&Node>)> {
    options.iter().filter_map(|o| match &o.node {
        Some(NodeEnum::DefElem(d)) => Some((d.defname.as_str(), d.arg.as_deref())),
        _ => None,
    })
}

/// DSQL's rule for a sequence's (or identity column's) CACHE: 1 or at least 65536.
fn cache_ok(options: &[Node]) -> bool {
    def_elems(options)
        .find(|(n, _)| *n == "cache")
        .and_then(|(_, a)| def_elem_int(a))
        .is_some_and(|c| c == 1 || c >= 65_536)
}

/// Builtin types DSQL accepts for columns (internal names, as the grammar resolves them).
const ACCEPTED_TYPES: &[&str] = &[
    "int2",
    "int4",
    "int8",
    "float4",
    "float8",
    "numeric",
    "bpchar",
    "varchar",
    "text",
    "date",
    "time",
    "timetz",
    "timestamp",
    "timestamptz",
    "interval",
    "bool",
    "bytea",
    "uuid",
    "json",
    "jsonb",
];

/// Builtin types DSQL refuses for columns, with PostgreSQL's display name
/// (`format_type_be`). Names not here and not accepted are left to PostgreSQL (a domain is
/// accepted; anything else is its 42704).
const REFUSED_TYPES: &[(&str, &str)] = &[
    ("money", "money"),
    ("xml", "xml"),
    ("pg_lsn", "pg_lsn"),
    ("pg_snapshot", "pg_snapshot"),
    ("txid_snapshot", "txid_snapshot"),
    ("inet", "inet"),
    ("cidr", "cidr"),
    ("macaddr", "macaddr"),
    ("macaddr8", "macaddr8"),
    ("point", "point"),
    ("line", "line"),
    ("lseg", "lseg"),
    ("box", "box"),
    ("path", "path"),
    ("polygon", "polygon"),
    ("circle", "circle"),
    ("tsvector", "tsvector"),
    ("tsquery", "tsquery"),
    ("int4range", "int4range"),
    ("int8range", "int8range"),
    ("numrange", "numrange"),
    ("tsrange", "tsrange"),
    ("tstzrange", "tstzrange"),
    ("daterange", "daterange"),
    ("int4multirange", "int4multirange"),
    ("int8multirange", "int8multirange"),
    ("nummultirange", "nummultirange"),
    ("tsmultirange", "tsmultirange"),
    ("tstzmultirange", "tstzmultirange"),
    ("datemultirange", "datemultirange"),
    ("bit", "bit"),
    ("varbit", "bit varying"),
    ("oid", "oid"),
    ("regclass", "regclass"),
    ("regtype", "regtype"),
    ("regproc", "regproc"),
    ("regprocedure", "regprocedure"),
    ("regoper", "regoper"),
    ("regoperator", "regoperator"),
    ("regnamespace", "regnamespace"),
    ("regrole", "regrole"),
    ("regconfig", "regconfig"),
    ("regdictionary", "regdictionary"),
    ("regcollation", "regcollation"),
    ("xid", "xid"),
    ("xid8", "xid8"),
    ("cid", "cid"),
    ("tid", "tid"),
    ("name", "name"),
    ("char", "\"char\""),
    ("jsonpath", "jsonpath"),
    ("aclitem", "aclitem"),
    ("refcursor", "refcursor"),
    ("int2vector", "int2vector"),
    ("oidvector", "oidvector"),
];

/// PostgreSQL's display name of an accepted builtin (used for arrays and identity errors).
fn display_name(internal: &str) -> &str {
    match internal {
        "int2" => "smallint",
        "int4" => "integer",
        "int8" => "bigint",
        "float4" => "real",
        "float8" => "double precision",
        "bool" => "boolean",
        "bpchar" => "character",
        "varchar" => "character varying",
        "timestamp" => "timestamp without time zone",
        "timestamptz" => "timestamp with time zone",
        "time" => "time without time zone",
        "timetz" => "time with time zone",
        other => REFUSED_TYPES
            .iter()
            .find(|(n, _)| *n == other)
            .map_or(other, |(_, d)| d),
    }
}

/// The column-type rule (§4a): `Some(refusal)` for a type DSQL refuses.
fn check_column_type(t: &protobuf::TypeName) -> Option<Refusal> {
    let name = last_name(&t.names)?;
    let qualified_elsewhere = t.names.len() > 1
        && !matches!(
            t.names.first().and_then(|n| n.node.as_ref()),
            Some(NodeEnum::String(s)) if s.sval == "pg_catalog"
        );
    if qualified_elsewhere {
        return None;
    }
    if t.names.len() == 1
        && matches!(
            name,
            "serial" | "bigserial" | "smallserial" | "serial2" | "serial4" | "serial8"
        )
    {
        return Some(Refusal::new(
            "42704",
            format!("type \"{name}\" does not exist"),
        ));
    }
    let known = ACCEPTED_TYPES.contains(&name) || REFUSED_TYPES.iter().any(|(n, _)| *n == name);
    if !known {
        return None;
    }
    if !t.array_bounds.is_empty() {
        return Some(Refusal::unsupported(format!(
            "datatype {}[] not supported",
            display_name(name)
        )));
    }
    if ACCEPTED_TYPES.contains(&name) {
        return check_type_size(name, t);
    }
    Some(Refusal::unsupported(format!(
        "datatype {} not supported",
        display_name(name)
    )))
}

/// §4a size limits on `char(n)` and `varchar(n)` (54000).
fn check_type_size(name: &str, t: &protobuf::TypeName) -> Option<Refusal> {
    let (limit, shown) = match name {
        "bpchar" => (4096, "char"),
        "varchar" => (65_535, "varchar"),
        _ => return None,
    };
    let n = t.typmods.first().and_then(|m| def_elem_int(Some(m)))?;
    (n > limit).then(|| {
        Refusal::new(
            "54000",
            format!("Datatype limit greater than {limit} bytes not supported for {shown}"),
        )
    })
}

/// §4c: an identity column is `bigint` with CACHE 1 or ≥ 65536.
fn check_identity(col: &protobuf::ColumnDef, options: &[Node]) -> Option<Refusal> {
    let name = col.type_name.as_ref().and_then(|t| last_name(&t.names))?;
    if name != "int8" {
        return Some(Refusal::unsupported(format!(
            "datatype {} not supported, identity column type must be bigint",
            display_name(name)
        )));
    }
    (!cache_ok(options)).then(|| {
        Refusal::unsupported(
            "identity column is not supported without an explicit cache size. please define CACHE greater than or equal to 65536 or equal to 1",
        )
    })
}

fn constraints(nodes: &[Node]) -> impl Iterator<Item = &protobuf::Constraint> {
    nodes.iter().filter_map(|n| match &n.node {
        Some(NodeEnum::Constraint(c)) => Some(c.as_ref()),
        _ => None,
    })
}

fn is(c: &protobuf::Constraint, t: ConstrType) -> bool {
    c.contype == t as i32
}

/// A column in `CREATE TABLE`.
fn check_column(col: &protobuf::ColumnDef) -> Option<Refusal> {
    if let Some(r) = col.type_name.as_ref().and_then(check_column_type) {
        return Some(r);
    }
    if col.coll_clause.is_some() {
        return Some(Refusal::unsupported("COLLATE clause not supported"));
    }
    constraints(&col.constraints)
        .filter(|c| is(c, ConstrType::ConstrIdentity))
        .find_map(|c| check_identity(col, &c.options))
}

fn check_create_table(s: &protobuf::CreateStmt) -> Verdict {
    let persistence = s
        .relation
        .as_ref()
        .map_or("p", |r| r.relpersistence.as_str());
    match persistence {
        "t" => {
            return Err(Refusal::unsupported(
                "TEMPORARY or TEMP table not supported for CREATE TABLE",
            ));
        }
        "u" => {
            return Err(Refusal::unsupported(
                "UNLOGGED table not supported for CREATE TABLE",
            ));
        }
        _ => {}
    }
    if s.partspec.is_some() {
        return Err(Refusal::unsupported(
            "PARTITION BY clause not supported for CREATE TABLE",
        ));
    }
    if s.partbound.is_some() {
        return Err(Refusal::unsupported(
            "PARTITION OF clause not supported for CREATE TABLE",
        ));
    }
    for elt in &s.table_elts {
        if let Some(NodeEnum::ColumnDef(col)) = &elt.node
            && let Some(r) = check_column(col)
        {
            return Err(r);
        }
    }
    Ok(Kind::Ddl)
}

/// PostgreSQL's name for an ALTER TABLE subcommand (`alter_table_type_to_string`).
fn subcommand_name(t: At) -> &'static str {
    match t {
        At::AtAddColumn | At::AtAddColumnToView => "ADD COLUMN",
        At::AtColumnDefault | At::AtCookedColumnDefault => "ALTER COLUMN ... SET DEFAULT",
        At::AtDropNotNull => "ALTER COLUMN ... DROP NOT NULL",
        At::AtSetNotNull | At::AtCheckNotNull => "ALTER COLUMN ... SET NOT NULL",
        At::AtDropExpression => "ALTER COLUMN ... DROP EXPRESSION",
        At::AtSetStatistics => "ALTER COLUMN ... SET STATISTICS",
        At::AtSetOptions => "ALTER COLUMN ... SET",
        At::AtResetOptions => "ALTER COLUMN ... RESET",
        At::AtSetStorage => "ALTER COLUMN ... SET STORAGE",
        At::AtSetCompression => "ALTER COLUMN ... SET COMPRESSION",
        At::AtDropColumn => "DROP COLUMN",
        At::AtAddConstraint | At::AtAddIndexConstraint => "ADD CONSTRAINT",
        At::AtAlterConstraint => "ALTER CONSTRAINT",
        At::AtValidateConstraint => "VALIDATE CONSTRAINT",
        At::AtDropConstraint => "DROP CONSTRAINT",
        At::AtAlterColumnType => "ALTER COLUMN ... SET DATA TYPE",
        At::AtAlterColumnGenericOptions => "ALTER COLUMN ... OPTIONS",
        At::AtChangeOwner => "OWNER TO",
        At::AtClusterOn => "CLUSTER ON",
        At::AtDropCluster => "SET WITHOUT CLUSTER",
        At::AtSetAccessMethod => "SET ACCESS METHOD",
        At::AtSetLogged => "SET LOGGED",
        At::AtSetUnLogged => "SET UNLOGGED",
        At::AtDropOids => "SET WITHOUT OIDS",
        At::AtSetTableSpace => "SET TABLESPACE",
        At::AtSetRelOptions => "SET",
        At::AtResetRelOptions => "RESET",
        At::AtEnableTrig => "ENABLE TRIGGER",
        At::AtEnableAlwaysTrig => "ENABLE ALWAYS TRIGGER",
        At::AtEnableReplicaTrig => "ENABLE REPLICA TRIGGER",
        At::AtDisableTrig => "DISABLE TRIGGER",
        At::AtEnableTrigAll => "ENABLE TRIGGER ALL",
        At::AtDisableTrigAll => "DISABLE TRIGGER ALL",
        At::AtEnableTrigUser => "ENABLE TRIGGER USER",
        At::AtDisableTrigUser => "DISABLE TRIGGER USER",
        At::AtEnableRule => "ENABLE RULE",
        At::AtEnableAlwaysRule => "ENABLE ALWAYS RULE",
        At::AtEnableReplicaRule => "ENABLE REPLICA RULE",
        At::AtDisableRule => "DISABLE RULE",
        At::AtAddInherit => "INHERIT",
        At::AtDropInherit => "NO INHERIT",
        At::AtAddOf => "OF",
        At::AtDropOf => "NOT OF",
        At::AtReplicaIdentity => "REPLICA IDENTITY",
        At::AtEnableRowSecurity => "ENABLE ROW SECURITY",
        At::AtDisableRowSecurity => "DISABLE ROW SECURITY",
        At::AtForceRowSecurity => "FORCE ROW SECURITY",
        At::AtNoForceRowSecurity => "NO FORCE ROW SECURITY",
        At::AtGenericOptions => "OPTIONS",
        At::AtAttachPartition => "ATTACH PARTITION",
        At::AtDetachPartition => "DETACH PARTITION",
        At::AtDetachPartitionFinalize => "DETACH PARTITION ... FINALIZE",
        At::AtAddIdentity => "ALTER COLUMN ... ADD IDENTITY",
        At::AtSetIdentity => "ALTER COLUMN ... SET",
        At::AtDropIdentity => "ALTER COLUMN ... DROP IDENTITY",
        At::Undefined
        | At::AtAddIndex
        | At::AtReAddIndex
        | At::AtReAddConstraint
        | At::AtReAddDomainConstraint
        | At::AtReAddComment
        | At::AtReplaceRelOptions
        | At::AtReAddStatistics => "",
    }
}

fn unsupported_alter(t: At) -> Refusal {
    Refusal::unsupported(format!(
        "unsupported ALTER TABLE {} statement",
        subcommand_name(t)
    ))
}

fn check_alter_cmd(cmd: &protobuf::AlterTableCmd) -> Option<Refusal> {
    let t = At::from_i32(cmd.subtype).unwrap_or(At::Undefined);
    let def = cmd.def.as_deref().and_then(|d| d.node.as_ref());
    match t {
        At::AtAddColumn => {
            let Some(NodeEnum::ColumnDef(col)) = def else {
                return None;
            };
            // (chosen) the type is checked before the constraints (§12.6).
            if let Some(r) = col.type_name.as_ref().and_then(check_column_type) {
                return Some(r);
            }
            if !col.constraints.is_empty() || col.raw_default.is_some() || col.coll_clause.is_some()
            {
                return Some(Refusal::unsupported(
                    "ALTER TABLE ADD COLUMN with constraint not supported",
                ));
            }
            None
        }
        At::AtAddConstraint => {
            let Some(NodeEnum::Constraint(c)) = def else {
                return None;
            };
            let not_valid_check = (is(c, ConstrType::ConstrCheck)
                || is(c, ConstrType::ConstrForeign))
                && c.skip_validation;
            let using_index = is(c, ConstrType::ConstrUnique) && !c.indexname.is_empty();
            (!not_valid_check && !using_index).then(|| unsupported_alter(t))
        }
        At::AtAddIdentity => {
            let Some(NodeEnum::Constraint(c)) = def else {
                return None;
            };
            (!cache_ok(&c.options)).then(|| {
                Refusal::unsupported(
                    "identity column is not supported without an explicit cache size. please define CACHE greater than or equal to 65536 or equal to 1",
                )
            })
        }
        At::AtDropColumn
        | At::AtSetStorage
        | At::AtColumnDefault
        | At::AtDropNotNull
        | At::AtDropExpression
        | At::AtDropConstraint
        | At::AtAlterConstraint
        | At::AtChangeOwner
        | At::AtSetIdentity
        | At::AtDropIdentity
        | At::AtEnableTrig
        | At::AtEnableAlwaysTrig
        | At::AtEnableReplicaTrig
        | At::AtDisableTrig
        | At::AtEnableTrigAll
        | At::AtDisableTrigAll
        | At::AtEnableTrigUser
        | At::AtDisableTrigUser => None,
        other => Some(unsupported_alter(other)),
    }
}

fn check_alter_table(s: &protobuf::AlterTableStmt, is_async: bool) -> Verdict {
    for cmd in &s.cmds {
        if let Some(NodeEnum::AlterTableCmd(cmd)) = &cmd.node {
            let validate = cmd.subtype == At::AtValidateConstraint as i32;
            if validate && is_async {
                continue;
            }
            if let Some(r) = check_alter_cmd(cmd) {
                return Err(r);
            }
        }
    }
    Ok(Kind::Ddl)
}

/// §6: index forms. `has_using` comes from the tokens: the grammar fills in `btree` when
/// `USING` is absent, so the tree cannot tell.
fn check_index(s: &protobuf::IndexStmt, is_async: bool, has_using: bool) -> Verdict {
    if s.concurrent {
        return Err(Refusal::unsupported(
            "CONCURRENTLY not supported for CREATE INDEX",
        ));
    }
    if !is_async {
        return Err(Refusal::unsupported(
            "unsupported mode. please use CREATE INDEX ASYNC.",
        ));
    }
    if has_using {
        return Err(Refusal::unsupported("USING not supported for CREATE INDEX"));
    }
    for p in &s.index_params {
        if let Some(NodeEnum::IndexElem(e)) = &p.node {
            if e.ordering != protobuf::SortByDir::SortbyDefault as i32 {
                return Err(Refusal::unsupported(
                    "specifying sort order not supported for index keys",
                ));
            }
            if !e.opclass.is_empty() {
                return Err(Refusal::unsupported("opclass not supported for index keys"));
            }
        }
    }
    Ok(Kind::Ddl)
}

fn check_function(s: &protobuf::CreateFunctionStmt) -> Verdict {
    if s.is_procedure {
        return Err(Refusal::unsupported("PROCEDURE is not supported"));
    }
    let language = def_elems(&s.options)
        .find(|(n, _)| *n == "language")
        .and_then(|(_, a)| def_elem_string(a))
        .unwrap_or_else(|| "sql".to_owned());
    if !language.eq_ignore_ascii_case("sql") {
        return Err(Refusal::unsupported(format!(
            "CREATE FUNCTION with language {language} not supported"
        )));
    }
    Ok(Kind::Ddl)
}

/// The body of a `CREATE FUNCTION ... LANGUAGE sql AS '<body>'` (the string form; a `BEGIN
/// ATOMIC` body is part of the statement's own tree): its statements run when the function
/// is called, so they are judged as DSQL judges statements ([`super::parse`] does).
pub(crate) fn sql_function_body(stmt: &NodeEnum) -> Option<String> {
    let NodeEnum::CreateFunctionStmt(s) = stmt else {
        return None;
    };
    let (_, arg) = def_elems(&s.options).find(|(n, _)| *n == "as")?;
    match arg?.node.as_ref()? {
        NodeEnum::List(l) => def_elem_string(l.items.first()),
        _ => None,
    }
}

/// The isolation level in transaction options (`BEGIN ISOLATION LEVEL ...`), refused unless
/// REPEATABLE READ.
fn check_isolation(options: &[Node]) -> Option<Refusal> {
    let level = def_elems(options)
        .find(|(n, _)| *n == "transaction_isolation")
        .and_then(|(_, a)| def_elem_string(a))?;
    (level != "repeatable read").then(|| {
        Refusal::unsupported(format!(
            "Unsupported isolation level: {}",
            level.to_ascii_uppercase()
        ))
    })
}

fn check_transaction(s: &protobuf::TransactionStmt) -> Verdict {
    use protobuf::TransactionStmtKind as T;
    let kind = T::from_i32(s.kind).unwrap_or(T::Undefined);
    let refused = |what: &str| {
        Err(Refusal::unsupported(format!(
            "unsupported transaction statement: {what}"
        )))
    };
    match kind {
        T::TransStmtBegin | T::TransStmtStart => match check_isolation(&s.options) {
            Some(r) => Err(r),
            None => Ok(Kind::Begin),
        },
        T::TransStmtCommit | T::TransStmtRollback => Ok(Kind::End),
        T::TransStmtSavepoint => refused("SAVEPOINT"),
        T::TransStmtRelease => refused("RELEASE"),
        T::TransStmtRollbackTo => refused("ROLLBACK TO"),
        T::TransStmtPrepare => refused("PREPARE"),
        T::TransStmtCommitPrepared => refused("COMMIT PREPARED"),
        T::TransStmtRollbackPrepared => refused("ROLLBACK PREPARED"),
        T::Undefined => Ok(Kind::Other),
    }
}

/// The SET allowlist (§10).
pub(crate) fn settable(name: &str) -> bool {
    matches!(
        name,
        "application_name"
            | "client_encoding"
            | "datestyle"
            | "extra_float_digits"
            | "intervalstyle"
            | "timezone"
            | "search_path"
            | "role"
            | "dsql.enable_batched_nestloop"
            | "disable_sync_create_index"
    ) || name.starts_with("enable_")
}

fn check_set(s: &protobuf::VariableSetStmt) -> Verdict {
    use protobuf::VariableSetKind as V;
    let kind = V::from_i32(s.kind).unwrap_or(V::Undefined);
    match kind {
        V::VarResetAll => Ok(Kind::Other),
        V::VarSetMulti => {
            // SET TRANSACTION ...: the isolation level is checked first (§7).
            if s.name == "TRANSACTION"
                && let Some(r) = check_isolation(&s.args)
            {
                return Err(r);
            }
            // (chosen) SET SESSION CHARACTERISTICS works, per the newest report (§12.5).
            if s.name == "SESSION CHARACTERISTICS" {
                return Ok(Kind::Other);
            }
            Err(set_refusal(&s.name))
        }
        V::VarSetValue if s.name == "client_encoding" => {
            let utf8 = match s.args.first().and_then(|a| a.node.as_ref()) {
                Some(NodeEnum::AConst(c)) => match c.val.as_ref() {
                    Some(protobuf::a_const::Val::Sval(v)) => is_utf8_encoding(&v.sval),
                    _ => false,
                },
                _ => false,
            };
            if utf8 {
                Ok(Kind::Other)
            } else {
                Err(set_refusal(&s.name))
            }
        }
        _ if settable(&s.name) => Ok(Kind::Other),
        _ => Err(set_refusal(&s.name)),
    }
}

fn set_refusal(name: &str) -> Refusal {
    Refusal::unsupported(format!(
        "setting configuration parameter \"{name}\" not supported"
    ))
}

fn check_show(s: &protobuf::VariableShowStmt) -> Verdict {
    if matches!(s.name.as_str(), "lc_collate" | "lc_ctype") {
        return Err(Refusal::new(
            "42704",
            format!("unrecognized configuration parameter \"{}\"", s.name),
        ));
    }
    Ok(Kind::Other)
}

/// Function calls DSQL refuses (§2b, §4b), found anywhere in the statement.
fn check_function_call(name: &str) -> Option<Refusal> {
    match name {
        "point" | "line" | "lseg" | "box" | "path" | "polygon" | "circle" => Some(
            Refusal::unsupported(format!("datatype {name} not supported")),
        ),
        "pg_backend_pid" => Some(Refusal::unsupported(format!(
            "function {name} not supported"
        ))),
        n if n.starts_with("pg_advisory_") || n.starts_with("pg_try_advisory_") => Some(
            Refusal::unsupported(format!("function {name} not supported")),
        ),
        _ => None,
    }
}

/// Whether a token's text may name a function [`check_function_call`] refuses: a cheap
/// filter, so the tree is searched only for statements that may hold one.
pub(crate) fn may_name_refused_function(word: &str) -> bool {
    let word = word.trim_matches('"').to_ascii_lowercase();
    check_function_call(&word).is_some() || word == "set_config" || word.starts_with("dsql_pgx")
}

/// Refusals found anywhere in a statement's tree, given as libpg_query's JSON (see
/// `ffi::parse_json`): locking strengths other than FOR UPDATE / FOR KEY SHARE, and refused
/// function calls, in subqueries, CTEs, VALUES lists, arrays, defaults and every other
/// place an expression may stand. Keys are only ever node and field names there (the
/// text's own strings are escaped values), so the search is linear and complete.
pub(crate) fn nested_refusal(json: &str) -> Option<Refusal> {
    if json.contains(r#""strength":"LCS_FORSHARE""#)
        || json.contains(r#""strength":"LCS_FORNOKEYUPDATE""#)
    {
        return Some(Refusal::unsupported(
            "locking clauses other than FOR UPDATE/FOR KEY SHARE are not supported",
        ));
    }
    // set_config() changes what SET may not: only the allow-list, by a constant name, and
    // client_encoding only to UTF-8.
    const SET_CONFIG: &str = r#"{"String":{"sval":"set_config"}}],"args":["#;
    let mut rest = json;
    while let Some(at) = rest.find(SET_CONFIG) {
        rest = &rest[at + SET_CONFIG.len()..];
        // The first two arguments, when both are string constants: `{"A_Const":{"sval":
        // {"sval":"<name>"},"location":<n>}},{"A_Const":{"sval":{"sval":"<value>"}...`.
        const CONST: &str = r#"{"A_Const":{"sval":{"sval":""#;
        let name = rest.strip_prefix(CONST).and_then(|n| n.split_once('"'));
        let value = name.and_then(|(_, after)| {
            let after = after.strip_prefix(r#"},"location":"#)?;
            let after = after.trim_start_matches(|c: char| c.is_ascii_digit());
            let value = after.strip_prefix("}},")?.strip_prefix(CONST)?;
            value.split('"').next()
        });
        let name = name.map(|(n, _)| n);
        let allowed = match name {
            Some("client_encoding") => value.is_some_and(is_utf8_encoding),
            Some(name) => settable(name),
            None => false,
        };
        if !allowed {
            return Some(set_refusal(name.unwrap_or("set_config")));
        }
    }
    // Function calls, and the procedure a CALL statement names.
    for call in [r#""FuncCall":{"funcname":["#, r#""funccall":{"funcname":["#] {
        if let Some(r) = refused_call(json, call) {
            return Some(r);
        }
    }
    None
}

/// The first refused call in `json` after a `call` key.
fn refused_call(json: &str, call: &str) -> Option<Refusal> {
    let mut rest = json;
    while let Some(at) = rest.find(call) {
        rest = &rest[at + call.len()..];
        // `{"String":{"sval":"pg_catalog"}},{"String":{"sval":"name"}}]`: the last name.
        let names = &rest[..rest.find(']').unwrap_or(rest.len())];
        let last = names
            .rsplit(r#"{"String":{"sval":""#)
            .next()
            .and_then(|n| n.split('"').next())
            .unwrap_or("");
        if let Some(r) = check_function_call(last) {
            return Some(r);
        }
        // The endpoint's own functions (the row check's, the IAM map's) are not the
        // client's to call: DSQL has none of them.
        if names.contains(r#"{"String":{"sval":"dsql_pgx"#) {
            let name: Vec<&str> = names
                .split(r#"{"String":{"sval":""#)
                .filter_map(|n| n.split('"').next())
                .filter(|n| !n.is_empty())
                .collect();
            return Some(Refusal::new(
                "42883",
                format!("function {} does not exist", name.join(".")),
            ));
        }
    }
    None
}

/// Facts about the statement's text that its tree does not carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TokenFacts {
    /// `ASYNC` followed `CREATE [UNIQUE] INDEX` or `ALTER TABLE` (and was removed).
    pub(crate) is_async: bool,
    /// `USING` before the first `(` of a `CREATE INDEX`.
    pub(crate) index_using: bool,
    /// A `TABLESAMPLE` keyword.
    pub(crate) tablesample: bool,
}

/// DSQL's verdict on one statement.
pub(crate) fn classify(stmt: &NodeEnum, facts: TokenFacts) -> Verdict {
    use NodeEnum as N;
    if facts.tablesample {
        return Err(Refusal::unsupported("TABLESAMPLE clause not supported"));
    }
    match stmt {
        N::SelectStmt(s) if s.into_clause.is_some() => unsupported_statement("CreateTableAs"),
        // `WITH x AS (INSERT ...) SELECT ...` modifies rows (PostgreSQL allows a
        // data-modifying WITH only at the top level).
        N::SelectStmt(s) if modifies_in_with(s.with_clause.as_ref()) => Ok(Kind::Dml),
        N::VariableShowStmt(s) => check_show(s),
        N::InsertStmt(s) => {
            // §7: a VALUES list past DSQL's row limit fails before anything is written.
            let rows = match s.select_stmt.as_deref().and_then(|n| n.node.as_ref()) {
                Some(N::SelectStmt(v)) => v.values_lists.len(),
                _ => 0,
            };
            if rows > 3000 {
                return Err(Refusal::new("54000", "transaction row limit exceeded"));
            }
            Ok(Kind::Dml)
        }
        N::UpdateStmt(_) | N::DeleteStmt(_) => Ok(Kind::Dml),
        N::MergeStmt(_) => Err(Refusal::unsupported("unsupported statement type: MERGE")),
        N::TransactionStmt(s) => check_transaction(s),
        // A role's defaults are SETs at its next login: the same allow-list.
        N::AlterRoleSetStmt(s) => match &s.setstmt {
            Some(set) => check_set(set).map(|_| Kind::Ddl),
            None => Ok(Kind::Ddl),
        },
        N::VariableSetStmt(s) => check_set(s),
        N::CreateStmt(s) => check_create_table(s),
        N::AlterTableStmt(s) => check_alter_table(s, facts.is_async),
        N::IndexStmt(s) => check_index(s, facts.is_async, facts.index_using),
        N::CreateFunctionStmt(s) => check_function(s),
        N::CreateSeqStmt(s) => {
            if cache_ok(&s.options) {
                Ok(Kind::Ddl)
            } else {
                Err(Refusal::unsupported(
                    "CREATE SEQUENCE is not supported without an explicit cache size. please define CACHE greater than or equal to 65536 or equal to 1",
                ))
            }
        }
        N::CreateTrigStmt(_) => Err(Refusal::unsupported("CREATE TRIGGER not supported")),
        N::CreateEnumStmt(_) => Err(Refusal::unsupported("CREATE TYPE not supported")),
        N::AlterEnumStmt(_) => Err(Refusal::unsupported("ALTER TYPE not supported")),
        N::RenameStmt(s) if s.rename_type == protobuf::ObjectType::ObjectType as i32 => Err(
            Refusal::unsupported("unsupported object in RENAME statement"),
        ),
        N::DropStmt(s) if s.remove_type == protobuf::ObjectType::ObjectType as i32 => {
            Err(Refusal::unsupported("unsupported object in DROP statement"))
        }
        N::VacuumStmt(s) if s.is_vacuumcmd => {
            Err(Refusal::unsupported("unsupported VACUUM statement"))
        }
        N::VacuumStmt(_) => Ok(Kind::Other),
        N::ExplainStmt(s) => {
            let inner = s.query.as_deref().and_then(|q| q.node.as_ref());
            let analyze = def_elems(&s.options).any(|(n, _)| n == "analyze");
            match inner.map(|q| classify(q, facts)) {
                Some(Err(r)) => Err(r),
                Some(Ok(Kind::Dml)) if analyze => Ok(Kind::Dml),
                _ => Ok(Kind::Other),
            }
        }
        N::CreateSchemaStmt(s) => {
            for elt in s.schema_elts.iter().filter_map(|e| e.node.as_ref()) {
                classify(elt, TokenFacts::default())?;
            }
            Ok(Kind::Ddl)
        }
        N::CreateDomainStmt(s) => match s.type_name.as_ref().and_then(check_column_type) {
            Some(r) => Err(r),
            None => Ok(Kind::Ddl),
        },
        N::ViewStmt(_)
        | N::DropStmt(_)
        | N::RenameStmt(_)
        | N::AlterSeqStmt(_)
        | N::AlterDomainStmt(_)
        | N::AlterObjectSchemaStmt(_)
        | N::AlterOwnerStmt(_)
        | N::AlterFunctionStmt(_)
        | N::CommentStmt(_)
        | N::CreateRoleStmt(_)
        | N::AlterRoleStmt(_)
        | N::DropRoleStmt(_)
        | N::GrantStmt(_)
        | N::GrantRoleStmt(_)
        | N::AlterDefaultPrivilegesStmt(_)
        | N::CreateStatsStmt(_)
        | N::AlterStatsStmt(_)
        | N::DropOwnedStmt(_)
        | N::ReassignOwnedStmt(_) => Ok(Kind::Ddl),
        other => match refused_node_name(other) {
            Some(name) => unsupported_statement(name),
            None => Ok(Kind::Other),
        },
    }
}

/// Whether a WITH clause has a data-modifying CTE.
fn modifies_in_with(with: Option<&protobuf::WithClause>) -> bool {
    use NodeEnum as N;
    let ctes = with.map_or(&[][..], |w| w.ctes.as_slice());
    ctes.iter().any(|cte| match cte.node.as_ref() {
        Some(N::CommonTableExpr(c)) => matches!(
            c.ctequery.as_deref().and_then(|q| q.node.as_ref()),
            Some(N::InsertStmt(_) | N::UpdateStmt(_) | N::DeleteStmt(_) | N::MergeStmt(_))
        ),
        _ => false,
    })
}

/// The `unsupported statement: <Name>` family (§2a): PostgreSQL's node name less `Stmt`.
/// Observed names come from the reference; the rest follow the same rule (inferred).
fn refused_node_name(stmt: &NodeEnum) -> Option<&'static str> {
    use NodeEnum as N;
    Some(match stmt {
        N::TruncateStmt(_) => "Truncate",
        N::CreateExtensionStmt(_) => "CreateExtension",
        N::AlterExtensionStmt(_) => "AlterExtension",
        N::AlterExtensionContentsStmt(_) => "AlterExtensionContents",
        N::CreatedbStmt(_) => "Createdb",
        N::DropdbStmt(_) => "Dropdb",
        N::AlterDatabaseStmt(_) => "AlterDatabase",
        N::AlterDatabaseSetStmt(_) => "AlterDatabaseSet",
        N::AlterDatabaseRefreshCollStmt(_) => "AlterDatabaseRefreshColl",
        N::CreateTableAsStmt(_) => "CreateTableAs",
        N::RefreshMatViewStmt(_) => "RefreshMatView",
        N::CompositeTypeStmt(_) => "CompositeType",
        N::CreateRangeStmt(_) => "CreateRange",
        N::CreateTableSpaceStmt(_) => "CreateTableSpace",
        N::DropTableSpaceStmt(_) => "DropTableSpace",
        N::AlterTableSpaceOptionsStmt(_) => "AlterTableSpaceOptions",
        N::AlterTableMoveAllStmt(_) => "AlterTableMoveAll",
        N::CreateForeignTableStmt(_) => "CreateForeignTable",
        N::CreateFdwStmt(_) => "CreateFdw",
        N::AlterFdwStmt(_) => "AlterFdw",
        N::CreateForeignServerStmt(_) => "CreateForeignServer",
        N::AlterForeignServerStmt(_) => "AlterForeignServer",
        N::CreateUserMappingStmt(_) => "CreateUserMapping",
        N::AlterUserMappingStmt(_) => "AlterUserMapping",
        N::DropUserMappingStmt(_) => "DropUserMapping",
        N::ImportForeignSchemaStmt(_) => "ImportForeignSchema",
        N::ListenStmt(_) => "Listen",
        N::NotifyStmt(_) => "Notify",
        N::UnlistenStmt(_) => "Unlisten",
        N::AlterSystemStmt(_) => "AlterSystem",
        N::LockStmt(_) => "Lock",
        N::PrepareStmt(_) => "Prepare",
        // (chosen) EXECUTE goes with PREPARE; DEALLOCATE is left alone (poolers send it).
        N::ExecuteStmt(_) => "Execute",
        N::DoStmt(_) => "Do",
        N::CreatePolicyStmt(_) => "CreatePolicy",
        N::AlterPolicyStmt(_) => "AlterPolicy",
        N::DefineStmt(_) => "Define",
        N::AlterTsconfigurationStmt(_) => "AlterTSConfiguration",
        N::AlterTsdictionaryStmt(_) => "AlterTSDictionary",
        N::CopyStmt(_) => "Copy",
        N::ClusterStmt(_) => "Cluster",
        N::ReindexStmt(_) => "Reindex",
        N::RuleStmt(_) => "Rule",
        N::CreateEventTrigStmt(_) => "CreateEventTrig",
        N::AlterEventTrigStmt(_) => "AlterEventTrig",
        N::CreatePublicationStmt(_) => "CreatePublication",
        N::AlterPublicationStmt(_) => "AlterPublication",
        N::CreateSubscriptionStmt(_) => "CreateSubscription",
        N::AlterSubscriptionStmt(_) => "AlterSubscription",
        N::DropSubscriptionStmt(_) => "DropSubscription",
        N::CreateConversionStmt(_) => "CreateConversion",
        N::CreateCastStmt(_) => "CreateCast",
        N::CreateOpClassStmt(_) => "CreateOpClass",
        N::CreateOpFamilyStmt(_) => "CreateOpFamily",
        N::AlterOpFamilyStmt(_) => "AlterOpFamily",
        N::AlterOperatorStmt(_) => "AlterOperator",
        N::AlterTypeStmt(_) => "AlterType",
        N::CreatePlangStmt(_) => "CreatePLang",
        N::CreateTransformStmt(_) => "CreateTransform",
        N::CreateAmStmt(_) => "CreateAm",
        N::AlterCollationStmt(_) => "AlterCollation",
        N::LoadStmt(_) => "Load",
        N::CheckPointStmt(_) => "CheckPoint",
        N::SecLabelStmt(_) => "SecLabel",
        _ => return None,
    })
}
