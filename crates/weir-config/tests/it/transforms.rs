//! Route header and query transforms: what they build, and every problem at its place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{ok, problems};

fn config(transform: &str) -> String {
    format!(
        "\
upstreams:
  be: {{ targets: [{{ url: 'http://be.invalid' }}] }}
routes:
  - name: r
    match: {{ path: '/items/{{id}}' }}
    upstream: be
    transform:
{transform}"
    )
}

#[test]
fn builds_lower_case_names_and_parsed_values() {
    let l = ok(&config(
        "      request:\n        headers: { set: { X-Item: '${path.id}' }, add: { X-Via: weir }, remove: [Cookie] }\n        query: { set: { src: gw }, remove: [debug] }\n      response:\n        headers: { set: { X-Req: '${request.id}' } }\n",
    ));
    let t = &l.routes.routes()[0].transforms;
    assert_eq!(t.request_headers.remove, ["cookie"]);
    assert_eq!(t.request_headers.set[0].0, "x-item");
    assert_eq!(t.request_headers.set[0].1.literal(), None);
    assert_eq!(t.request_headers.add[0].1.literal(), Some("weir"));
    assert_eq!(t.query.set[0].0, "src");
    assert_eq!(t.response_headers.set[0].0, "x-req");
}

#[test]
fn every_problem_at_its_place() {
    let p = problems(&config(
        "      request:\n        headers:\n          set: { Host: x, 'X Bad': y, X-A: '${user.name}', X-B: '${path.name}', X-C: '${request.id' }\n          remove: [Content-Length]\n        query: { set: { 'a&b': 1 }, remove: [''] }\n      response:\n        headers: { set: { X-D: '${header.X-Tenant}', Transfer-Encoding: x } }\n",
    ));
    assert_eq!(
        p,
        [
            "weir.yaml:10:24: routes[0].transform.request.headers.set.Host: `Host` is managed by \
             weir (it frames or routes the message); a transform cannot change it",
            "weir.yaml:10:36: routes[0].transform.request.headers.set.X Bad: \"X Bad\" is not a \
             valid header name",
            "weir.yaml:10:44: routes[0].transform.request.headers.set.X-A: unknown variable \
             `${user.name}` (known: consumer.name, request.id, request.ip, path.NAME, \
             header.NAME, tls.client_subject)",
            "weir.yaml:10:65: routes[0].transform.request.headers.set.X-B: `${path.name}` is not \
             a parameter of the route's path; the route's path parameters are id",
            "weir.yaml:10:86: routes[0].transform.request.headers.set.X-C: \"${request.id\" has a \
             `${` without its `}`",
            "weir.yaml:11:20: routes[0].transform.request.headers.remove[0]: `Content-Length` is \
             managed by weir (it frames or routes the message); a transform cannot change it",
            "weir.yaml:12:32: routes[0].transform.request.query.set.a&b: '&' cannot be in a query \
             parameter name",
            "weir.yaml:12:46: routes[0].transform.request.query.remove[0]: a query parameter \
             needs a name",
            "weir.yaml:14:32: routes[0].transform.response.headers.set.X-D: a response header can \
             use ${consumer.name}, ${request.id} and ${request.ip}; the request's path parameters \
             and headers are not kept for the response",
            "weir.yaml:14:73: routes[0].transform.response.headers.set.Transfer-Encoding: \
             `Transfer-Encoding` is managed by weir (it frames or routes the message); a \
             transform cannot change it",
        ]
    );
}
