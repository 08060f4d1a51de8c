"""A Glance paste filter for the openstack test lane: Glance without Keystone.

Glance's stock unauthenticated pipeline gives every request a context with
no project and ``service_catalog=None``; glance_store's cinder store then
refuses every ``cinder://`` location. This filter stands in for Keystone's
auth_token middleware the way Cinder's ``noauth`` does: the token is
``user:project`` (as the ``cinder``/``glance`` clients send it with
``--os-auth-type noauth``/``--os-auth-token``), the project named
``admin_project`` is an admin, any other a plain member, and the context
carries the token on (glance_store's cinder store passes it to Cinder,
whose noauth reads ``user:project`` from it).

Cinder in ``noauth`` calls Glance with no token at all (it has no
credentials to send). Under Keystone it would send the token of the user it
acts for; here such a request acts for the project written in the file
``acting_project_file`` (the test writes the project whose Cinder request it
is about to make), with that project's rights.
"""

import urllib.parse

import webob.exc

import glance.context
from glance.api import policy
from glance.common import wsgi


class NoauthContext(wsgi.Middleware):
    def __init__(self, app, admin_project, acting_project_file):
        self.admin_project = admin_project
        self.acting_project_file = acting_project_file
        self.policy_enforcer = policy.Enforcer()
        super().__init__(app)

    def process_request(self, req):
        token = req.headers.get('X-Auth-Token')
        if token:
            user, _sep, project = urllib.parse.unquote(token).partition(':')
            if not user or not project:
                raise webob.exc.HTTPUnauthorized(
                    explanation='the token is user:project')
        else:
            with open(self.acting_project_file) as f:
                project = f.read().strip()
            if not project:
                raise webob.exc.HTTPInternalServerError(
                    explanation='the acting project file is empty')
            user = 'cinder'
        is_admin = project == self.admin_project
        req.context = glance.context.RequestContext(
            user_id=user, project_id=project,
            roles=['admin', 'member', 'reader'] if is_admin else ['member', 'reader'],
            is_admin=is_admin, auth_token='%s:%s' % (user, project),
            service_catalog=[], policy_enforcer=self.policy_enforcer,
            request_id=req.headers.get('X-Openstack-Request-ID'))

    def process_response(self, resp):
        return resp


def filter_factory(global_conf, **local_conf):
    def _filter(app):
        return NoauthContext(app, local_conf['admin_project'],
                             local_conf['acting_project_file'])
    return _filter
