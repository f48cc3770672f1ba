//! The HTTP routes under `/api/v1`, collected with their OpenAPI descriptions.

pub(crate) mod admin;
pub(crate) mod agents;
pub(crate) mod auth;
pub(crate) mod incidents;

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
        (name = "admin", description = "Users, enrollment tokens and the audit log (admins)")
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

/// Every `/api/v1` route and the OpenAPI document describing them.
pub(crate) fn api() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::login))
        .routes(routes!(auth::me))
        .routes(routes!(agents::enroll))
        .routes(routes!(agents::list))
        .routes(routes!(agents::get, agents::revoke))
        .routes(routes!(agents::incidents))
        .routes(routes!(agents::inventory))
        .routes(routes!(agents::inventory_diff))
        .routes(routes!(agents::presence))
        .routes(routes!(agents::execute))
        .routes(routes!(incidents::get, incidents::patch))
        .routes(routes!(incidents::analyze))
        .routes(routes!(incidents::execute))
        .routes(routes!(admin::create_token, admin::list_tokens))
        .routes(routes!(admin::revoke_token))
        .routes(routes!(admin::create_user, admin::list_users))
        .routes(routes!(admin::update_user))
        .routes(routes!(admin::audit))
        .split_for_parts()
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
