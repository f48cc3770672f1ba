//! The HTTP routes under `/api/v1`, collected with their OpenAPI descriptions.

pub(crate) mod actions;
pub(crate) mod admin;
pub(crate) mod agents;
pub(crate) mod auth;
pub(crate) mod enrollment;
pub(crate) mod incidents;
pub(crate) mod inventory;
pub(crate) mod notifications;
pub(crate) mod schema;
pub(crate) mod stream;

use serde::Deserialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "OpsPilot API",
        description = "Fleet monitoring and remediation: agents, incidents, actions. Errors are RFC 7807 \
                       problem documents (application/problem+json) with a stable `type`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Logging in"),
        (name = "agents", description = "Agents, their presence, inventory, incidents and actions"),
        (name = "incidents", description = "Incidents, analysis and suggested actions"),
        (name = "actions", description = "Fleet-wide actions: one command to many agents"),
        (name = "stream", description = "Changes as they happen (Server-Sent Events)"),
        (name = "admin", description = "Users, enrollment tokens, the audit log and notification targets (admins)")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::builder().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// What every operation can answer besides what its own annotation lists, added to the
/// document once every route is in it. Without them the document under-promised: a
/// client (or schemathesis) met 401, 415, 429 and 503 answers no operation listed.
struct CommonContract;

impl utoipa::Modify for CommonContract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        for item in openapi.paths.paths.values_mut() {
            let operations =
                [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
                let has_body = operation.request_body.is_some();
                let has_params = operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses.entry(status.to_owned()).or_insert_with(|| problem_response(description));
                };
                if has_body || has_params {
                    add("400", "Invalid path, query or body");
                }
                if secured {
                    add("401", "Missing, invalid or expired token, or the user is disabled");
                    add("403", "The user's role does not allow this");
                }
                if has_body {
                    add("408", "The body did not arrive within BODY_TIMEOUT");
                    add("413", "Body over 64 KiB");
                    add("415", "Body that is not application/json");
                }
                add("429", "Rate limited; see Retry-After");
                add("503", "A dependency (database, message bus) is unavailable; retry shortly");
                // Every list pages through `page_size`, so every `limit` has its bounds.
                for parameter in operation.parameters.iter_mut().flatten() {
                    let utoipa::openapi::RefOr::T(parameter) = parameter else { continue };
                    let Some(utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(schema))) =
                        parameter.schema.as_mut()
                    else {
                        continue;
                    };
                    if parameter.parameter_in == ParameterIn::Query && parameter.name == "limit" {
                        schema.minimum = Some(utoipa::Number::Int(1));
                        schema.maximum = Some(utoipa::Number::Int(MAX_PAGE_SIZE as isize));
                        schema.examples = vec![serde_json::json!(DEFAULT_PAGE_SIZE)];
                    }
                }
            }
        }
    }
}

/// An agent's id in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct AgentPath {
    /// Agent id (12 lowercase hex characters).
    #[param(value_type = schema::AgentIdDoc, inline)]
    pub(crate) id: String,
}

/// An incident's id in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct IncidentPath {
    /// Incident id.
    #[param(minimum = 1, example = 1)]
    pub(crate) id: i64,
}

fn problem_response(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
        )
        .into()
}

/// Every `/api/v1` route and the OpenAPI document describing them.
pub(crate) fn api() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::login))
        .routes(routes!(auth::me))
        .routes(routes!(enrollment::enroll))
        .routes(routes!(enrollment::challenge))
        .routes(routes!(agents::delete_revoked))
        .routes(routes!(agents::list))
        .routes(routes!(agents::get, agents::patch, agents::revoke))
        .routes(routes!(agents::incidents))
        .routes(routes!(inventory::inventory))
        .routes(routes!(inventory::inventory_diff))
        .routes(routes!(agents::presence))
        .routes(routes!(agents::execute))
        .routes(routes!(actions::create, actions::list))
        .routes(routes!(actions::get))
        .routes(routes!(actions::results))
        .routes(routes!(actions::cancel))
        .routes(routes!(incidents::list))
        .routes(routes!(stream::stream))
        .routes(routes!(stream::ticket))
        .routes(routes!(incidents::summary))
        .routes(routes!(incidents::get, incidents::patch))
        .routes(routes!(incidents::analyze))
        .routes(routes!(incidents::execute))
        .routes(routes!(admin::create_token, admin::list_tokens))
        .routes(routes!(admin::revoke_token))
        .routes(routes!(admin::create_user, admin::list_users))
        .routes(routes!(admin::update_user))
        .routes(routes!(admin::audit))
        .routes(routes!(admin::list_conflicts))
        .routes(routes!(admin::resolve_conflict))
        .routes(routes!(notifications::list_targets, notifications::create_target))
        .routes(routes!(notifications::update_target, notifications::delete_target))
        .routes(routes!(notifications::test_target))
        .routes(routes!(notifications::deliveries))
        .split_for_parts();
    utoipa::Modify::modify(&CommonContract, &mut openapi);
    utoipa::Modify::modify(&schema::InlineDescriptions, &mut openapi);
    utoipa::Modify::modify(&schema::CrossFieldRules, &mut openapi);
    (router, openapi)
}

const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 500;

/// Page size bounds shared by every list.
pub(crate) fn page_size(limit: Option<u32>) -> Result<i64, crate::error::ApiError> {
    match limit {
        None => Ok(i64::from(DEFAULT_PAGE_SIZE)),
        Some(n @ 1..=MAX_PAGE_SIZE) => Ok(i64::from(n)),
        Some(_) => Err(crate::error::ApiError::bad_request(
            "invalid-query",
            format!("limit must be between 1 and {MAX_PAGE_SIZE}"),
        )),
    }
}
