//! The shapes the OpenAPI document gives values whose rules live in code: agent ids,
//! event kinds, the command allow-list, the incident statuses. Each is built from the
//! constants and enums the handlers check against, so the document says what the API
//! accepts and cannot drift from it: generated clients and contract testers (the
//! contract test, schemathesis) trust the document, and a value it allows that a
//! handler then refuses is a bug in one of the two.
//!
//! Patterns avoid look-around and `\d`-style shorthands that mean different things in
//! different regex engines (ECMA 262, Rust's `regex`, Python's `re`): every tool that
//! reads the document must read the same rule.

use serde_json::json;
#[cfg(test)]
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AllOfBuilder, AnyOfBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use wire_models::{AgentId, CommandName, EventKind, Severity};

/// An agent id the document uses in its examples (paths, queries and bodies alike, so
/// an example request is consistent with itself).
const EXAMPLE_AGENT_ID: &str = "3f9a2c7d1e04";
/// A user NKey (with a valid checksum) for examples.
const EXAMPLE_USER_KEY: &str = "UA2W7PRQ35PJEJRE3MCZWK32VNNFUZJE6BY33PPKNX3C6SH7BFCNDADW";

/// A character that is not a control character (`char::is_control`: C0, DEL, C1).
const PRINTABLE: &str = r"[^\x00-\x1f\x7f-\x9f]";
/// Neither a control character nor white space (what `str::trim` would remove).
const VISIBLE: &str = r"[^\s\x00-\x1f\x7f-\x9f]";

pub(crate) fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn nullable(types: Type) -> SchemaType {
    SchemaType::from_iter([types, Type::Null])
}

/// `values` as a string enumeration.
pub(crate) fn enumeration<S: AsRef<str>>(values: impl IntoIterator<Item = S>) -> ObjectBuilder {
    string().enum_values(Some(values.into_iter().map(|v| v.as_ref().to_owned())))
}

// --- agents ---------------------------------------------------------------------------

fn agent_id_builder() -> ObjectBuilder {
    string()
        .pattern(Some(format!("^[0-9a-f]{{{}}}$", AgentId::LEN)))
        .min_length(Some(AgentId::LEN))
        .max_length(Some(AgentId::LEN))
        .examples([EXAMPLE_AGENT_ID])
}

/// `wire_models::AgentId`: twelve lowercase hex characters.
fn agent_id() -> Schema {
    agent_id_builder().into()
}

/// A hostname prefix filter: 1 to 253 characters, no control characters.
fn hostname_prefix() -> Schema {
    string()
        .pattern(Some(format!("^{PRINTABLE}+$")))
        .min_length(Some(1))
        .max_length(Some(253))
        .examples(["web-"])
        .into()
}

/// A label key: an optional lowercase DNS prefix and `/`, then a name (Kubernetes'
/// rules, `wire_models::check_label_key`). The prefix's total length (at most 253) is
/// left to the description: a pattern that counts it needs look-ahead.
const LABEL_KEY: &str = r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$";
/// A label name: 1 to 63 letters, digits, `-`, `_` or `.`, starting and ending with a
/// letter or digit.
const LABEL_NAME: &str = r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$";
/// A label value: empty, or a name (`wire_models::check_label_value`).
const LABEL_VALUE: &str = r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$";

/// A label selector as `wire_models::LabelSelector::parse` reads it, with at least one
/// requirement: `key`, `!key`, `key=value` (`==`, `!=`), `key in (v1,v2)`,
/// `key notin (v1)`, joined by commas, spaces and tabs around. The counts (at most 32
/// requirements, 64 values in a set) are in the description: counted repetitions of
/// this size make a pattern too large for some regex engines.
fn selector() -> Schema {
    let key = &LABEL_KEY[1..LABEL_KEY.len() - 1];
    let value = &LABEL_VALUE[1..LABEL_VALUE.len() - 1];
    let some_value = &LABEL_NAME[1..LABEL_NAME.len() - 1];
    let ws = "[ \\t]*";
    // A set holds one value or more; a set of one value cannot be empty.
    let set = format!(r"\({ws}({some_value}{ws}|{value}{ws}(,{ws}{value}{ws})+)\)");
    let requirement =
        format!("(!{ws}{key}|{key}{ws}(==|!=|=){ws}{value}|{key}[ \\t]+(in|notin){ws}{set}|{key})");
    string()
        .pattern(Some(format!("^{ws}{requirement}({ws},{ws}{requirement})*{ws}$")))
        .min_length(Some(1))
        .max_length(Some(4096))
        .description(Some(
            "A label selector: requirements joined by commas, all of which must hold (`env=prod`, \
             `env!=dev`, `role in (web,lb)`, `zone notin (eu-1)`, `canary`, `!legacy`); at most 32 \
             requirements and 64 values in a set.",
        ))
        .examples(["env=prod,role in (web,lb)"])
        .into()
}

/// The labels of a `PATCH /api/v1/agents/{id}`: at least one, at most
/// `wire_models::MAX_LABELS`; a value sets the label, `null` removes it.
fn label_changes() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "Labels to set (`\"key\": \"value\"`) or remove (`\"key\": null`); the others stay. A key \
             is an optional lowercase DNS prefix of at most 253 characters and `/`, then 1 to 63 \
             letters, digits, `-`, `_` or `.` starting and ending with a letter or digit; a value \
             is empty or follows the same rule as the name.",
        ))
        .property_names(Some(
            string().pattern(Some(LABEL_KEY)).min_length(Some(1)).max_length(Some(317)).examples(["env"]),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(nullable(Type::String))
                .pattern(Some(LABEL_VALUE))
                .max_length(Some(63)),
        ))
        .min_properties(Some(1))
        .max_properties(Some(wire_models::MAX_LABELS))
        .examples([json!({"env": "prod", "legacy": null})])
        .into()
}

// --- incidents --------------------------------------------------------------------------

/// An incident status.
fn incident_status() -> Schema {
    enumeration(storage::incidents::IncidentStatus::ALL.map(|s| s.as_str())).into()
}

/// A severity.
fn severity() -> Schema {
    enumeration(Severity::ALL.map(Severity::as_str)).into()
}

fn event_kind_builder() -> ObjectBuilder {
    string()
        .pattern(Some(format!("^[a-z0-9][a-z0-9_-]{{0,{}}}$", EventKind::MAX_LEN - 1)))
        .min_length(Some(1))
        .max_length(Some(EventKind::MAX_LEN))
        .examples(["service_down"])
}

/// `wire_models::EventKind`: an incident's kind (`type`).
fn event_kind() -> Schema {
    event_kind_builder().into()
}

/// Free text an incident's `source` or `raw_error` contains.
fn incident_text() -> Schema {
    string()
        .pattern(Some(format!("^{PRINTABLE}+$")))
        .min_length(Some(3))
        .max_length(Some(200))
        .examples(["nginx"])
        .into()
}

/// A fleet incident list's cursor (`FleetCursor::encode`): `c{id}` for the default
/// sort, `l{microseconds}.{id}` for `last_seen`.
fn fleet_cursor() -> Schema {
    string().pattern(Some(r"^(c-?[0-9]{1,18}|l-?[0-9]{1,18}\.-?[0-9]{1,18})$")).examples(["c1000"]).into()
}

// --- the command allow-list -------------------------------------------------------------

/// The parameters each allow-listed command takes (`Command::from_parts`), keyed by
/// name: `None` for a command that takes none (`params` absent, `null` or `{}`).
fn command_params(name: CommandName) -> Option<Schema> {
    let object = || {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::FreeForm(false)))
    };
    // `wire_models::ServiceName`: starts with a letter or digit, never `..`.
    let service = || {
        string()
            .pattern(Some(r"^[A-Za-z0-9][A-Za-z0-9_@:-]*(\.[A-Za-z0-9_@:-]+)*\.?$"))
            .min_length(Some(1))
            .max_length(Some(wire_models::ServiceName::MAX_LEN))
            .examples(["nginx"])
    };
    match name {
        CommandName::Ping | CommandName::CollectInventory => None,
        CommandName::ServiceStatus
        | CommandName::StartService
        | CommandName::StopService
        | CommandName::RestartService => {
            Some(object().property("service", service()).required("service").into())
        }
        CommandName::TailLog => {
            // `wire_models::LogPath`: under /var/log/, plain components, never `.` or `..`.
            let component = r"(\.*[A-Za-z0-9_-][A-Za-z0-9_.-]*|\.{3,})";
            let root = wire_models::LogPath::ROOT.replace('/', r"\/");
            let path = string()
                .pattern(Some(format!("^{root}{component}(/{component})*$")))
                .max_length(Some(wire_models::LogPath::MAX_LEN))
                .examples(["/var/log/syslog"]);
            let lines = ObjectBuilder::new()
                .schema_type(nullable(Type::Integer))
                .minimum(Some(1))
                .maximum(Some(wire_models::Command::MAX_TAIL_LINES))
                .description(Some(format!("Default {}.", wire_models::Command::DEFAULT_TAIL_LINES)));
            Some(object().property("path", path).property("lines", lines).required("path").into())
        }
    }
}

/// What `command` and `params` may be together: one alternative per parameter shape,
/// each naming its commands. Added with `allOf` to a body that has both fields.
fn command_with_params() -> Schema {
    let mut without: Vec<&str> = Vec::new();
    let mut with: Vec<(Vec<&str>, Schema)> = Vec::new();
    for name in CommandName::ALL {
        match command_params(name) {
            None => without.push(name.as_str()),
            Some(params) => match with.iter_mut().find(|(_, p)| *p == params) {
                Some((names, _)) => names.push(name.as_str()),
                None => with.push((vec![name.as_str()], params)),
            },
        }
    }
    let mut alternatives = OneOfBuilder::new();
    if !without.is_empty() {
        let empty = ObjectBuilder::new().schema_type(nullable(Type::Object)).max_properties(Some(0));
        alternatives = alternatives.item(
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .property("command", enumeration(without))
                .property("params", empty)
                .required("command"),
        );
    }
    for (names, params) in with {
        alternatives = alternatives.item(
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .property("command", enumeration(names))
                .property("params", params)
                .required("command")
                .required("params"),
        );
    }
    alternatives.into()
}

/// An allow-listed command's name.
fn command_name() -> Schema {
    enumeration(CommandName::ALL.map(CommandName::as_str)).examples(["restart_service"]).into()
}

// --- enrollment -------------------------------------------------------------------------

/// A user NKey (`U` and 55 base32 characters). Its checksum is not in the pattern.
fn user_key() -> Schema {
    string()
        .pattern(Some("^U[A-Z2-7]{55}$"))
        .min_length(Some(56))
        .max_length(Some(56))
        .description(Some("A user NKey (`U...`); its last characters are a checksum the API verifies."))
        .examples([EXAMPLE_USER_KEY])
        .into()
}

/// A machine fingerprint: 8 to 512 characters without control characters, counted
/// without surrounding white space (which the API trims).
fn machine_fingerprint() -> Schema {
    string()
        .pattern(Some(format!("^{VISIBLE}{PRINTABLE}{{6,510}}{VISIBLE}$")))
        .min_length(Some(8))
        .max_length(Some(512))
        .examples(["4c4c4544-0042-3510-8052-b4c04f4e3732"])
        .into()
}

/// An enrolling machine's hostname: 1 to 253 characters, no white space or control
/// characters.
fn hostname() -> Schema {
    string()
        .pattern(Some(format!("^{VISIBLE}+$")))
        .min_length(Some(1))
        .max_length(Some(253))
        .examples(["web-01.example.com"])
        .into()
}

/// A nonce from `POST /api/v1/agents/enroll/challenge`.
fn nonce() -> Schema {
    string()
        .pattern(Some("^[A-Za-z0-9_-]+$"))
        .min_length(Some(16))
        .max_length(Some(128))
        .examples(["eDd7UldXtJRCf4kBT5fXmSjzk40U61HiD7XeyYNOswQ"])
        .into()
}

/// An Ed25519 signature (64 bytes) in base64url without padding: 86 characters, the
/// last of which carries only two bits.
fn signature() -> Schema {
    string()
        .pattern(Some("^[A-Za-z0-9_-]{85}[AQgw]$"))
        .min_length(Some(86))
        .max_length(Some(86))
        .examples(["AHPsJm1PtK2_PRBKpxT58RAy_Yq22IKfxAtSyG9khdeSjMLr1GRvP-PzdL4R2QW_S-J1-obziJ2CqffcXkHdMg"])
        .into()
}

// --- people and names -------------------------------------------------------------------

/// A user's email as `create_user` checks it: a non-empty local part, `@`, a domain
/// with a dot, no white space or control characters, at most 254 characters.
fn email() -> Schema {
    let c = r"[^@\s\x00-\x1f\x7f-\x9f]";
    let d = r"[^\s\x00-\x1f\x7f-\x9f]";
    string()
        .pattern(Some(format!(r"^{c}+@{d}*\.{d}*$")))
        .max_length(Some(254))
        .examples(["ops@example.com"])
        .into()
}

/// A password as `validate_password` checks it.
fn password() -> Schema {
    string().min_length(Some(12)).max_length(Some(1024)).examples(["correct horse battery staple"]).into()
}

/// A name people give a thing: 1 to `max` characters without control characters,
/// starting and ending with a visible one.
fn display_name(max: usize, example: &str) -> Schema {
    string()
        .pattern(Some(format!("^{VISIBLE}({PRINTABLE}*{VISIBLE})?$")))
        .min_length(Some(1))
        .max_length(Some(max))
        .examples([example])
        .into()
}

/// An enrollment token's name.
fn token_name() -> Schema {
    display_name(128, "rack 12")
}

// --- notification targets ---------------------------------------------------------------

/// A host as a URL pattern can check it: a DNS name whose last label starts with a
/// letter (a numeric last label would be parsed as an IPv4 address), or an IPv4
/// address, or an IPv6 literal (its eight groups, or fewer around one `::`).
fn url_host() -> String {
    let octet = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
    let h = "[0-9A-Fa-f]{1,4}";
    let ipv6 = [
        format!("({h}:){{7}}{h}"),
        format!("({h}:){{1,7}}:"),
        format!("({h}:){{1,6}}:{h}"),
        format!("({h}:){{1,5}}(:{h}){{1,2}}"),
        format!("({h}:){{1,4}}(:{h}){{1,3}}"),
        format!("({h}:){{1,3}}(:{h}){{1,4}}"),
        format!("({h}:){{1,2}}(:{h}){{1,5}}"),
        format!("{h}:(:{h}){{1,6}}"),
        format!(":((:{h}){{1,7}}|:)"),
    ]
    .join("|");
    format!(r"(([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*|{octet}(\.{octet}){{3}}|\[({ipv6})\])")
}

/// A port, 0 to 65535.
const URL_PORT: &str =
    "(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?";
/// A path and query of printable ASCII; no fragment (`#`).
const URL_REST: &str = r#"([/?][!-"$-~]*)?"#;

/// A webhook's URL: http or https, a host, no credentials, no fragment.
fn webhook_url() -> Schema {
    string()
        .pattern(Some(format!("^https?://{}{URL_PORT}{URL_REST}$", url_host())))
        .max_length(Some(2048))
        .examples(["https://hooks.example.com/opspilot"])
        .into()
}

/// A Slack incoming-webhook URL: https, or http to a loopback address (a local relay).
fn slack_url() -> Schema {
    let octet = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
    let loopback = format!(r"(localhost|127(\.{octet}){{3}}|\[::1\])");
    string()
        .pattern(Some(format!("^(https://{}|http://{loopback}){URL_PORT}{URL_REST}$", url_host())))
        .max_length(Some(2048))
        .examples(["https://hooks.slack.com/services/T000/B000/XXXX"])
        .into()
}

// --- fixes to what the derive writes ---------------------------------------------------

/// utoipa describes an inlined field (`value_type = X, inline` with a doc comment) as
/// `allOf: [X, {"type": "object", "description": ...}]`, which no string satisfies:
/// a validating client would refuse every value. This folds the description into `X`.
pub(crate) struct InlineDescriptions;

impl utoipa::Modify for InlineDescriptions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for schema in openapi.components.iter_mut().flat_map(|c| c.schemas.values_mut()) {
            fold_descriptions(schema);
        }
    }
}

fn fold_descriptions(schema: &mut utoipa::openapi::RefOr<Schema>) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{AdditionalProperties, ArrayItems};
    let RefOr::T(inner) = schema else { return };
    match inner {
        Schema::AllOf(all) => {
            all.items.iter_mut().for_each(fold_descriptions);
            if let [RefOr::T(Schema::Object(value)), RefOr::T(Schema::Object(note))] = all.items.as_slice()
                && note.schema_type == SchemaType::Type(Type::Object)
                && note.properties.is_empty()
                && note.required.is_empty()
                && note.description.is_some()
            {
                let mut value = value.clone();
                value.description.clone_from(&note.description);
                *inner = Schema::Object(value);
            }
        }
        Schema::OneOf(one) => one.items.iter_mut().for_each(fold_descriptions),
        Schema::AnyOf(any) => any.items.iter_mut().for_each(fold_descriptions),
        Schema::Object(object) => {
            object.properties.values_mut().for_each(fold_descriptions);
            if let Some(extra) = object.additional_properties.as_deref_mut()
                && let AdditionalProperties::RefOr(extra) = extra
            {
                fold_descriptions(extra);
            }
        }
        Schema::Array(array) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items {
                fold_descriptions(items);
            }
        }
        _ => {}
    }
}

// --- rules across fields ----------------------------------------------------------------

/// Marks a body property that, when given, must equal the named path parameter.
const EQUALS_PATH_PARAMETER: &str = "x-equals-path-parameter";

/// Rules that tie one field of a body to another, which field annotations cannot say:
/// the parameters each command takes, "a token or a proof", "exactly one target",
/// what each kind of notification target accepts. Applied to the component schemas
/// once every route is in the document.
pub(crate) struct CrossFieldRules;

impl utoipa::Modify for CrossFieldRules {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::ToSchema;
        let Some(components) = openapi.components.as_mut() else { return };
        let schemas = &mut components.schemas;
        // An execute's body may repeat the agent id, and must then repeat the path's:
        // a rule between a path and a body no schema keyword states, so it is said
        // with an extension tools (and the contract test) can read.
        if let Some(utoipa::openapi::RefOr::T(Schema::Object(body))) =
            schemas.get_mut(crate::requests::ExecuteRequest::name().as_ref())
            && let Some(utoipa::openapi::RefOr::T(agent_id)) = body.properties.get_mut("agent_id")
        {
            let tie = utoipa::openapi::extensions::ExtensionsBuilder::new()
                .add(EQUALS_PATH_PARAMETER, "id")
                .build();
            match agent_id {
                Schema::OneOf(one) => one.extensions = Some(tie),
                Schema::Object(object) => object.extensions = Some(tie),
                _ => {}
            }
        }
        let mut add = |name: std::borrow::Cow<'static, str>, rule: Schema| {
            if let Some(schema) = schemas.remove(name.as_ref()) {
                let combined = AllOfBuilder::new().item(schema).item(rule);
                schemas.insert(name.into_owned(), combined.into());
            }
        };
        add(crate::requests::ExecuteRequest::name(), command_with_params());
        add(crate::requests::ExecuteSuggested::name(), command_with_params());
        add(crate::routes::actions::FleetActionRequest::name(), command_with_params());
        add(
            crate::routes::actions::ActionTarget::name(),
            exactly_one(&["agent_ids", "selector", "hostname_prefix"]),
        );
        add(crate::requests::EnrollRequest::name(), token_or_proof());
        add(crate::routes::notifications::CreateTarget::name(), target_kinds());
    }
}

/// Exactly one of `fields` is given (and not `null`).
fn exactly_one(fields: &[&str]) -> Schema {
    let mut one = OneOfBuilder::new();
    for field in fields {
        let mut alternative = ObjectBuilder::new().schema_type(SchemaType::AnyValue).required(*field);
        for other in fields.iter().filter(|f| *f != field) {
            alternative = alternative.property(*other, ObjectBuilder::new().schema_type(Type::Null));
        }
        let present = ObjectBuilder::new().schema_type(SchemaType::from_iter([
            Type::String,
            Type::Array,
            Type::Object,
            Type::Integer,
            Type::Number,
            Type::Boolean,
        ]));
        one = one.item(alternative.property(*field, present));
    }
    one.into()
}

/// An enrollment carries a token, a proof, or both.
fn token_or_proof() -> Schema {
    AnyOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .property("token", string())
                .required("token"),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .property("proof", ObjectBuilder::new().schema_type(Type::Object))
                .required("proof"),
        )
        .into()
}

/// A webhook takes a signing secret (or has one generated); a Slack target's URL is
/// its secret and it takes none. Each kind has its own URL rule.
fn target_kinds() -> Schema {
    let kind = |k: storage::notifications::TargetKind| enumeration([k.as_str()]);
    let null = || ObjectBuilder::new().schema_type(Type::Null);
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .property("kind", kind(storage::notifications::TargetKind::Webhook))
                .property("url", webhook_url()),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .property("kind", kind(storage::notifications::TargetKind::Slack))
                .property("url", slack_url())
                .property("secret", null()),
        )
        .into()
}

/// A webhook's signing secret: 16 to 256 printable ASCII characters, no spaces.
fn webhook_secret() -> Schema {
    string()
        .pattern(Some("^[!-~]+$"))
        .min_length(Some(storage::notifications::MIN_SECRET_LEN))
        .max_length(Some(256))
        .examples(["whsec_0123456789abcdef"])
        .into()
}

/// Types that stand for a schema built here, for `value_type = ..., inline` in
/// `#[param(...)]` and `#[schema(...)]` (which keep the field's description, style
/// and optionality, where `schema_with` would drop them).
macro_rules! documented {
    ($($(#[$doc:meta])* $name:ident => $schema:expr;)*) => {$(
        $(#[$doc])*
        pub(crate) struct $name;
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::RefOr::T($schema)
            }
        }
        impl utoipa::ToSchema for $name {}
    )*};
}
pub(crate) use documented;

documented! {
    AgentIdDoc => agent_id();
    HostnamePrefixDoc => hostname_prefix();
    SelectorDoc => selector();
    LabelChangesDoc => label_changes();
    IncidentStatusDoc => incident_status();
    SeverityDoc => severity();
    EventKindDoc => event_kind();
    IncidentTextDoc => incident_text();
    FleetCursorDoc => fleet_cursor();
    CommandNameDoc => command_name();
    UserKeyDoc => user_key();
    FingerprintDoc => machine_fingerprint();
    HostnameDoc => hostname();
    NonceDoc => nonce();
    SignatureDoc => signature();
    EmailDoc => email();
    PasswordDoc => password();
    TokenNameDoc => token_name();
    WebhookUrlDoc => webhook_url();
    WebhookSecretDoc => webhook_secret();
}

/// The examples a schema built here carries, for tests of the examples themselves.
#[cfg(test)]
fn examples_of(schema: &Schema) -> Vec<serde_json::Value> {
    match schema {
        Schema::Object(o) => o.examples.clone(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_are_what_the_validators_accept() {
        let first = |s: Schema| examples_of(&s)[0].as_str().unwrap_or_default().to_owned();
        assert!(AgentId::parse(&first(agent_id())).is_ok());
        assert!(EventKind::parse(&first(event_kind())).is_ok());
        assert!(natsbus::auth::check_user_key(&first(user_key())).is_ok());
        assert!(wire_models::LabelSelector::parse(&first(selector())).is_ok());
        assert!(crate::routes::auth::validate_email(&first(email())).is_ok());
        for kind in [storage::notifications::TargetKind::Webhook, storage::notifications::TargetKind::Slack] {
            let url = match kind {
                storage::notifications::TargetKind::Webhook => first(webhook_url()),
                storage::notifications::TargetKind::Slack => first(slack_url()),
            };
            assert!(storage::notifications::check_target_url(kind, &url).is_ok(), "{url}");
        }
    }

    #[test]
    fn a_url_the_pattern_allows_is_one_the_api_takes() {
        let pattern = pattern_of(webhook_url());
        for url in [
            "http://example.com",
            "https://hooks.example.com:8443/a/b?c=d&e",
            "http://10.0.0.1/x",
            "http://[::1]:8080/",
            "http://[2001:db8::8a2e:370:7334]/",
            "http://[1:2:3:4:5:6:7:8]",
            "http://a-b.c-d/%zz",
            "http://[D98fa.58c]",
            "http://[1::2::3]",
            "http://1.2.3.999/",
            "http://user:pw@example.com/",
            "http://example.com/#frag",
            "ftp://example.com/",
            "http://exa mple.com/",
            "http://example.com:65536/",
        ] {
            if pattern.is_match(url) {
                let taken = storage::notifications::check_target_url(
                    storage::notifications::TargetKind::Webhook,
                    url,
                );
                assert!(taken.is_ok(), "{url}: {taken:?}");
            }
        }
        for refused in
            ["http://[D98fa.58c]", "http://[1::2::3]", "http://1.2.3.999/", "http://user:pw@example.com/"]
        {
            assert!(!pattern.is_match(refused), "{refused}");
        }
    }

    fn pattern_of(schema: Schema) -> regex::Regex {
        let Schema::Object(o) = schema else { panic!("an object schema") };
        regex::Regex::new(o.pattern.as_deref().unwrap_or_default()).unwrap()
    }

    #[test]
    fn the_selector_pattern_is_the_selector_grammar() {
        let pattern = pattern_of(selector());
        let samples = [
            "env=prod",
            "env==prod",
            " env != dev ,\tcanary",
            "role in (web,lb)",
            "role in(web, lb )",
            "zone notin (eu-1)",
            "!legacy",
            "! legacy",
            "example.com/tier=web",
            "env=",
            "a in (,b)",
            "a in ()",
            "a in ( )",
            "",
            "   ",
            "env=prod,",
            ",env",
            "envin (a)",
            "env inx (a)",
            "env prod",
            "!env=x",
            "env===x",
            "env=pr od",
            "Env/x=y",
            "a/b/c",
            "env=\u{1}",
            "env=ünïcode",
            "-bad=x",
            "ok-=x",
            "x=-bad",
        ];
        for sample in samples {
            let parsed = wire_models::LabelSelector::parse(sample).is_ok_and(|s| !s.is_empty());
            assert_eq!(pattern.is_match(sample), parsed, "{sample:?}");
        }
    }

    #[test]
    fn the_service_and_log_path_patterns_are_the_allow_list_rules() {
        let service = pattern_of(match command_params(CommandName::RestartService) {
            Some(Schema::Object(o)) => match o.properties.get("service") {
                Some(RefOr::T(s)) => s.clone(),
                _ => panic!("a service property"),
            },
            _ => panic!("restart_service takes params"),
        });
        for sample in [
            "nginx",
            "a",
            "nginx.service",
            "getty@tty1",
            "a:b-c_d",
            "a.",
            "a..b",
            ".a",
            "-a",
            "a b",
            "a/b",
            "",
        ] {
            let valid = wire_models::ServiceName::parse(sample).is_ok();
            assert_eq!(service.is_match(sample), valid, "{sample:?}");
        }
        let path = pattern_of(match command_params(CommandName::TailLog) {
            Some(Schema::Object(o)) => match o.properties.get("path") {
                Some(RefOr::T(s)) => s.clone(),
                _ => panic!("a path property"),
            },
            _ => panic!("tail_log takes params"),
        });
        for sample in [
            "/var/log/syslog",
            "/var/log/nginx/access.log",
            "/var/log/.hidden",
            "/var/log/...",
            "/var/log/a..b",
            "/var/log/",
            "/var/log/.",
            "/var/log/..",
            "/var/log/../etc/passwd",
            "/var/log//x",
            "/var/log/x/",
            "/etc/passwd",
            "/var/log/a b",
        ] {
            let valid = wire_models::LogPath::parse(sample).is_ok();
            assert_eq!(path.is_match(sample), valid, "{sample:?}");
        }
    }

    #[test]
    fn every_command_has_its_parameters_described() {
        let Schema::OneOf(one) = command_with_params() else { panic!("a oneOf") };
        let named: usize = one
            .items
            .iter()
            .map(|alternative| {
                let RefOr::T(Schema::Object(o)) = alternative else { return 0 };
                let Some(RefOr::T(Schema::Object(command))) = o.properties.get("command") else { return 0 };
                command.enum_values.as_ref().map_or(0, Vec::len)
            })
            .sum();
        assert_eq!(named, CommandName::ALL.len());
    }
}
