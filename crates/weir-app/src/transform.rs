//! Applying a route's header and query transforms. Literal header values are built into
//! `HeaderValue`s once, when the configuration is loaded; only values with variables are
//! rendered per request. A rendered value a header cannot hold (a client's header carrying
//! a control character into `${header.NAME}`) is dropped, never sent.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use weir_domain::transform::{Facts, HeaderOps, Template, Transforms};

/// A header value: built once, or rendered per request.
#[derive(Clone, Debug)]
enum Value {
    Fixed(HeaderValue),
    Template(Template),
}

/// One header list, ready to apply.
#[derive(Clone, Debug, Default)]
pub(crate) struct HeaderChanges {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, Value)>,
    add: Vec<(HeaderName, Value)>,
}

/// A route's transforms, ready to apply.
#[derive(Clone, Debug, Default)]
pub(crate) struct RouteTransforms {
    pub(crate) request: HeaderChanges,
    pub(crate) response: HeaderChanges,
}

impl RouteTransforms {
    /// Builds what the config checked; a name or value that still does not parse is a bug
    /// reported here rather than per request.
    pub(crate) fn build(t: &Transforms) -> Result<Self, String> {
        Ok(Self {
            request: HeaderChanges::build(&t.request_headers)?,
            response: HeaderChanges::build(&t.response_headers)?,
        })
    }
}

impl HeaderChanges {
    fn build(ops: &HeaderOps) -> Result<Self, String> {
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("{n}: {e}"));
        let value = |t: &Template| -> Result<Value, String> {
            match t.literal() {
                Some(l) => HeaderValue::from_str(l)
                    .map(Value::Fixed)
                    .map_err(|e| format!("{l:?}: {e}")),
                None => Ok(Value::Template(t.clone())),
            }
        };
        Ok(Self {
            remove: ops
                .remove
                .iter()
                .map(|n| name(n))
                .collect::<Result<_, _>>()?,
            set: ops
                .set
                .iter()
                .map(|(n, t)| Ok((name(n)?, value(t)?)))
                .collect::<Result<_, String>>()?,
            add: ops
                .add
                .iter()
                .map(|(n, t)| Ok((name(n)?, value(t)?)))
                .collect::<Result<_, String>>()?,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Renders the values with variables against `facts`, before anything changes (so
    /// `${header.NAME}` reads the headers as they were).
    pub(crate) fn render(&self, facts: &impl Facts) -> Rendered {
        let mut values = Vec::new();
        let mut buf = Vec::new();
        for (_, v) in self.set.iter().chain(&self.add) {
            if let Value::Template(t) = v {
                buf.clear();
                t.render(facts, &mut buf);
                values.push(HeaderValue::from_bytes(&buf).ok());
            }
        }
        Rendered(values)
    }

    /// Applies the changes to `headers`: remove, then set, then add.
    pub(crate) fn apply(&self, headers: &mut HeaderMap, rendered: Rendered) {
        let mut next = rendered.0.into_iter();
        let mut value_of = |v: &Value| match v {
            Value::Fixed(h) => Some(h.clone()),
            Value::Template(_) => next.next().flatten(),
        };
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, v) in &self.set {
            match value_of(v) {
                Some(h) => {
                    headers.insert(name.clone(), h);
                }
                None => {
                    headers.remove(name);
                }
            }
        }
        for (name, v) in &self.add {
            if let Some(h) = value_of(v) {
                headers.append(name.clone(), h);
            }
        }
    }
}

/// The values of a [`HeaderChanges`] with variables, rendered for one request (`None`: a
/// value a header cannot hold, dropped).
pub(crate) struct Rendered(Vec<Option<HeaderValue>>);

/// The facts of one request, for templates.
pub(crate) struct RequestFacts<'a> {
    pub(crate) consumer: Option<&'a str>,
    pub(crate) request_id: &'a HeaderValue,
    pub(crate) client_ip: IpAddr,
    pub(crate) client_subject: Option<&'a str>,
    pub(crate) params: &'a [(&'a str, String)],
    pub(crate) headers: Option<&'a HeaderMap>,
    /// On a request whose response may be stored for others, only these headers (the
    /// cache key's) may be read: no header outside the key can shape what is stored.
    pub(crate) readable: Option<&'a [String]>,
}

impl<'a> RequestFacts<'a> {
    /// The facts the exchange knows, with the request's path parameters and headers.
    pub(crate) fn of(
        ex: &'a crate::pipeline::Exchange,
        params: &'a [(&'a str, String)],
        headers: Option<&'a HeaderMap>,
        readable: Option<&'a [String]>,
    ) -> Self {
        Self {
            consumer: ex.principal.as_ref().map(|p| &*p.name),
            request_id: &ex.request_id,
            client_ip: ex.client_ip,
            client_subject: ex.client_subject.as_deref(),
            params,
            headers,
            readable,
        }
    }
}

impl Facts for RequestFacts<'_> {
    fn consumer(&self) -> Option<&str> {
        self.consumer
    }

    fn request_id(&self) -> &[u8] {
        self.request_id.as_bytes()
    }

    fn client_ip(&self) -> IpAddr {
        self.client_ip
    }

    fn client_subject(&self) -> Option<&str> {
        self.client_subject
    }

    fn path_param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn header(&self, lower_name: &str, out: &mut Vec<u8>) {
        let Some(headers) = self.headers else { return };
        if self
            .readable
            .is_some_and(|names| !names.iter().any(|n| n == lower_name))
        {
            return;
        }
        for (i, v) in headers.get_all(lower_name).iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(v.as_bytes());
        }
    }
}
