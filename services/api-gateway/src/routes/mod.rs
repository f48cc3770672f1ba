//! The HTTP routes under `/api/v1`, collected with their OpenAPI descriptions.

pub(crate) mod actions;
pub(crate) mod admin;
pub(crate) mod agents;
pub(crate) mod auth;
pub(crate) mod enrollment;
pub(crate) mod incidents;
pub(crate) mod inventory;
pub(crate) mod notifications;
pub(crate) mod stream;

use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
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

/// What every operation can answer besides what its own annotation lists, and the
/// shapes of ids the handlers check, added to the document once every route is in it.
/// Without them the document under-promised: a client (or schemathesis) met 401, 415,
/// 429 and 503 answers no operation listed, and agent ids the API refuses looked valid.
struct CommonContract;

/// Twelve lowercase hex characters, as `wire_models::AgentId` requires.
const AGENT_ID_PATTERN: &str = "^[0-9a-f]{12}$";

impl utoipa::Modify for CommonContract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        for (path, item) in openapi.paths.paths.iter_mut() {
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
                for parameter in operation.parameters.iter_mut().flatten() {
                    let utoipa::openapi::RefOr::T(parameter) = parameter else { continue };
                    let Some(utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(schema))) =
                        parameter.schema.as_mut()
                    else {
                        continue;
                    };
                    match (&parameter.parameter_in, parameter.name.as_str()) {
                        (ParameterIn::Path, "id")
                            if path.starts_with("/api/v1/agents/{id}")
                                || path.starts_with("/api/v1/revoked-agents/{id}") =>
                        {
                            schema.pattern = Some(AGENT_ID_PATTERN.into());
                        }
                        (ParameterIn::Path, "id") if path.starts_with("/api/v1/incidents/{id}") => {
                            schema.minimum = Some(utoipa::Number::Int(1));
                        }
                        (ParameterIn::Query, "after") if path == "/api/v1/agents" => {
                            schema.pattern = Some(AGENT_ID_PATTERN.into());
                        }
                        (ParameterIn::Query, "agent_id") if path == "/api/v1/audit" => {
                            schema.pattern = Some(AGENT_ID_PATTERN.into());
                        }
                        (ParameterIn::Query, "limit") => {
                            schema.minimum = Some(utoipa::Number::Int(1));
                            schema.maximum = Some(utoipa::Number::Int(500));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
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
    (router, openapi)
}

/// Page size bounds shared by every list.
pub(crate) fn page_size(limit: Option<u32>) -> Result<i64, crate::error::ApiError> {
    match limit {
        None => Ok(100),
        Some(n @ 1..=500) => Ok(i64::from(n)),
        Some(_) => {
            Err(crate::error::ApiError::bad_request("invalid-query", "limit must be between 1 and 500"))
        }
    }
}
