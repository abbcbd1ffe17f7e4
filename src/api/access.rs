//! Who may call which route. Every route is declared once, in `api::groups`, inside a
//! [`Group`] of routes that need the same [`Rule`]: the group adds each route to the router
//! and records it, so the access check, the route table ([`super::routes`]) and the OpenAPI
//! document's security all come from that one declaration.
//!
//! With API keys configured, each keyed group gets a [`Guard`] as its route layer: 401 for a
//! missing or unknown key, 403 for a key without the group's scope. It runs on the runtime,
//! inside the request's span, before any extractor reads the body. Unmatched paths reach the
//! 404 fallback unchecked (it reveals nothing); a known path with the wrong method needs an
//! admin key before it learns so (see `method_not_allowed`).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::handler::Handler;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use futures_util::future::Either;

use super::error::ApiError;
use crate::auth::{Keys, Rule, Scope};
use crate::state::AppState;

/// A route as declared: what [`super::routes`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeclaredRoute {
    /// `GET`, `POST` or `DELETE` (axum answers `HEAD` with the `GET` route).
    pub method: &'static str,
    /// axum's path pattern, e.g. `/v1/models/{name}`.
    pub path: &'static str,
    pub rule: Rule,
}

/// Routes that need the same access, declared together.
pub(crate) struct Group {
    rule: Rule,
    router: Router<AppState>,
    routes: Vec<DeclaredRoute>,
}

impl Group {
    /// Routes anyone may call: health checks, the OpenAPI document.
    pub(crate) fn open() -> Group {
        Group::new(Rule::Open)
    }

    /// Routes that need a key with `scope` (when keys are configured).
    pub(crate) fn scope(scope: Scope) -> Group {
        Group::new(Rule::Scope(scope))
    }

    fn new(rule: Rule) -> Group {
        Group {
            rule,
            router: Router::new(),
            routes: Vec::new(),
        }
    }

    pub(crate) fn get<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        h: H,
    ) -> Group {
        self.add("GET", path, get(h))
    }

    pub(crate) fn post<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        h: H,
    ) -> Group {
        self.add("POST", path, post(h))
    }

    pub(crate) fn delete<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        h: H,
    ) -> Group {
        self.add("DELETE", path, delete(h))
    }

    /// `get`, with `wrap` adding layers of the route's own around the handler (compression).
    pub(crate) fn get_with<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        h: H,
        wrap: impl FnOnce(MethodRouter<AppState>) -> MethodRouter<AppState>,
    ) -> Group {
        self.add("GET", path, wrap(get(h)))
    }

    /// `post`, with `wrap` adding layers of the route's own around the handler (a body limit).
    pub(crate) fn post_with<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        h: H,
        wrap: impl FnOnce(MethodRouter<AppState>) -> MethodRouter<AppState>,
    ) -> Group {
        self.add("POST", path, wrap(post(h)))
    }

    fn add(
        mut self,
        method: &'static str,
        path: &'static str,
        route: MethodRouter<AppState>,
    ) -> Group {
        self.router = self.router.route(path, route);
        self.routes.push(DeclaredRoute {
            method,
            path,
            rule: self.rule,
        });
        self
    }

    /// The group's routes, guarded when `keys` are configured, and their declarations.
    pub(crate) fn finish(self, keys: Option<&Arc<Keys>>) -> (Router<AppState>, Vec<DeclaredRoute>) {
        let router = match (self.rule, keys) {
            (Rule::Scope(scope), Some(keys)) => self.router.route_layer(guard(keys, scope)),
            (Rule::Open, _) | (Rule::Scope(_), None) => self.router,
        };
        (router, self.routes)
    }
}

/// The check `keys` and `scope` make of a request's `Authorization: Bearer <key>`.
pub(crate) fn check(keys: &Keys, scope: Scope, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(presented) = presented else {
        return Err(ApiError::Unauthorized(
            "this route needs an API key: Authorization: Bearer <key>".into(),
        ));
    };
    let Some(entry) = keys.find(presented) else {
        return Err(ApiError::Unauthorized("unknown API key".into()));
    };
    if !entry.scopes.contains(&scope) {
        return Err(ApiError::Forbidden(format!(
            "API key '{}' lacks the '{}' scope this route needs",
            entry.name,
            scope.as_str()
        )));
    }
    Ok(())
}

/// The guard requiring `scope` (for routes declared outside the groups: admin).
pub(crate) fn guard(keys: &Arc<Keys>, scope: Scope) -> Guard {
    Guard {
        keys: keys.clone(),
        scope,
    }
}

/// The route layer of a keyed group. A hand-written service rather than
/// `middleware::from_fn`: it adds no allocation to a request.
#[derive(Clone)]
pub(crate) struct Guard {
    keys: Arc<Keys>,
    scope: Scope,
}

impl<S> tower::Layer<S> for Guard {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Guarded<S> {
    inner: S,
    guard: Guard,
}

impl<S> tower::Service<Request> for Guarded<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<std::future::Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match check(&self.guard.keys, self.guard.scope, req.headers()) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(refused) => Either::Left(std::future::ready(Ok(refused.into_response()))),
        }
    }
}
