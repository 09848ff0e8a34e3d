// OHIF's app config as medshard serves it (/ohif/app-config.js, copied by ohif/bundle.mjs):
// OHIF reads medshard's own DICOMweb (/dicom-web) as the logged-in user.
//
// The user logs in on medshard's page (same origin, same tab), which keeps the session in
// sessionStorage ('medshard.session': access and refresh tokens, expiry). Every request OHIF
// makes (QIDO, WADO metadata, frames, thumbnails, the image loader's workers) asks OHIF's
// userAuthenticationService for its Authorization header; the small extension below answers
// it from that session, read afresh each time, and refreshes the access token before it
// expires, writing the new pair back where medshard's page finds it. No token is ever put in
// a URL. Without a session, OHIF is not started: the browser goes to medshard's login page.
// The server decides what the user may see: a study outside their care team answers 404.
(function medshardOhifConfig() {
  'use strict';

  var KEY = 'medshard.session';
  var BASE = '/ohif/';
  var DICOMWEB = window.location.origin + '/dicom-web';

  // what OHIF's index.html set inline (medshard's CSP allows no inline script)
  window.PUBLIC_URL = BASE;
  window.browserImportFunction = function (module) {
    return import(module);
  };

  function load() {
    try {
      var raw = window.sessionStorage.getItem(KEY);
      return raw ? JSON.parse(raw) : null;
    } catch (_) {
      return null;
    }
  }

  function toLogin() {
    window.location.replace('/#/login');
  }

  var refreshing = null;
  var timer;

  /** Exchange the refresh token for a new pair, as medshard's page does (api.ts). */
  function refresh() {
    if (refreshing) return refreshing;
    var current = load();
    if (!current) return Promise.resolve(false);
    refreshing = fetch('/api/auth/refresh', {
      method: 'POST',
      headers: {
        'Content-Type': 'application/x-www-form-urlencoded',
        Accept: 'application/json',
      },
      body: new URLSearchParams({ refresh_token: current.refresh }),
    })
      .then(function (r) {
        if (r.status === 401) {
          window.sessionStorage.removeItem(KEY);
          toLogin();
          return false;
        }
        if (!r.ok) return true; // a hiccup: the access token may still work; try again later
        return r.json().then(function (pair) {
          current.access = pair.access_token;
          current.refresh = pair.refresh_token;
          current.expiresAt = Date.now() + pair.expires_in * 1000;
          current.lifetime = pair.expires_in;
          window.sessionStorage.setItem(KEY, JSON.stringify(current));
          return true;
        });
      })
      .catch(function () {
        return true;
      })
      .finally(function () {
        refreshing = null;
        schedule();
      });
    return refreshing;
  }

  /** Refresh when 80% of the lifetime is used, at most a minute before expiry. */
  function schedule() {
    if (timer !== undefined) window.clearTimeout(timer);
    var s = load();
    if (!s) return;
    var lead = Math.min(60000, s.lifetime * 200);
    timer = window.setTimeout(refresh, Math.max(1000, s.expiresAt - lead - Date.now()));
  }

  var session = load();
  if (!session || !session.access) {
    toLogin();
    return;
  }
  schedule();

  /** An OHIF extension that only supplies the Authorization header. */
  var medshardAuth = {
    id: 'medshard-auth',
    preRegistration: function (args) {
      var auth = args.servicesManager.services.userAuthenticationService;
      auth.setServiceImplementation({
        getAuthorizationHeader: function () {
          var s = load();
          return s && s.access ? { Authorization: 'Bearer ' + s.access } : {};
        },
        handleUnauthenticated: function () {
          toLogin();
          return null;
        },
      });
    },
  };

  window.config = {
    name: 'medshard',
    routerBasename: '/ohif',
    extensions: [medshardAuth],
    modes: [],
    customizationService: {},
    showStudyList: true,
    maxNumberOfWebWorkers: 3,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: true,
    showLoadingIndicator: true,
    strictZSpacingForVolumeViewport: true,
    groupEnabledModesFirst: true,
    maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 25 },
    showErrorDetails: 'always',
    defaultDataSourceName: 'medshard',
    dataSources: [
      {
        namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
        sourceName: 'medshard',
        configuration: {
          friendlyName: 'medshard',
          name: 'medshard',
          wadoUriRoot: DICOMWEB,
          qidoRoot: DICOMWEB,
          wadoRoot: DICOMWEB,
          qidoSupportsIncludeField: true,
          imageRendering: 'wadors',
          thumbnailRendering: 'wadors',
          enableStudyLazyLoad: true,
          supportsFuzzyMatching: false,
          supportsWildcard: true,
          staticWado: false,
          singlepart: 'bulkdata,video',
          bulkDataURI: { enabled: true },
          omitQuotationForMultipartRequest: true,
        },
      },
    ],
    httpErrorHandler: function (error) {
      // medshard answers 401 for a dead token (refresh or log in again); 403/404 are the
      // server's "not yours", which OHIF shows as a study that cannot be loaded
      if (error && error.status === 401) {
        refresh().then(function (ok) {
          if (!ok) toLogin();
        });
      }
    },
  };
})();
