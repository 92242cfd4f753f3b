//! The plumbing every transport layer shares, written once: a layer says
//! what it does around the rest of the stack (`Around::around`, which
//! answers itself or calls the inner service), and `AroundLayer` /
//! `Wrapped` make it a tower `Layer` and `Service`.

use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::body::Body;
use tower::{Layer, Service};

use crate::support::futures::BoxFuture;

/// A response to come, from the layer or from the inner service.
pub type Answer<E> = BoxFuture<'static, Result<Response<Body>, E>>;

/// The rest of the stack, as a layer sees it: an HTTP service whose
/// futures and errors can cross tasks.
pub trait Inner<B>:
    Service<Request<B>, Response = Response<Body>, Future: Send + 'static, Error: Send + 'static> + Send
{
}

impl<S, B> Inner<B> for S where
    S: Service<
            Request<B>,
            Response = Response<Body>,
            Future: Send + 'static,
            Error: Send + 'static,
        > + Send
{
}

pub trait Around: Clone {
    fn around<S: Inner<B>, B>(&self, request: Request<B>, inner: &mut S) -> Answer<S::Error>;
}

#[derive(Clone, Debug)]
pub struct AroundLayer<A>(pub A);

impl<S, A: Around> Layer<S> for AroundLayer<A> {
    type Service = Wrapped<S, A>;

    fn layer(&self, inner: S) -> Wrapped<S, A> {
        Wrapped {
            inner,
            around: self.0.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Wrapped<S, A> {
    inner: S,
    around: A,
}

impl<S: Inner<B>, B, A: Around> Service<Request<B>> for Wrapped<S, A> {
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Answer<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.around.around(request, &mut self.inner)
    }
}
