// The Node client against a Podium with authentication on: the key of `apiKey` (or
// PODIUM_API_KEY) goes out as `authorization: Bearer <key>`; without one the server
// answers UNAUTHENTICATED, with a viewer key a write answers PERMISSION_DENIED.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { PermissionDeniedError, PodiumClient, UnauthenticatedError } from '../src/index.js';
import { Podium } from './support/podium.js';

describe('API keys', { skip: !process.env.PODIUM_TEST_DATABASE_URL && 'needs PODIUM_TEST_DATABASE_URL' }, () => {
  /** @type {Podium} */ let podium;

  before(async () => {
    podium = await Podium.start(['--auth', 'required']);
  });

  after(async () => {
    await podium?.stop();
  });

  it('sends the key and is refused without one', async () => {
    const admin = podium.createKey('default', 'admin');
    const viewer = podium.createKey('default', 'viewer');
    const saved = process.env.PODIUM_API_KEY;
    delete process.env.PODIUM_API_KEY;
    const anonymous = new PodiumClient(podium.address);
    const withKey = new PodiumClient(podium.address, { apiKey: admin });
    const asViewer = new PodiumClient(podium.address, { apiKey: viewer });
    try {
      await assert.rejects(anonymous.listAgents(), (error) => {
        assert.ok(error instanceof UnauthenticatedError);
        assert.equal(error.reason, 'API_KEY_MISSING');
        return true;
      });
      assert.deepEqual((await withKey.listAgents()).agents ?? [], []);
      await assert.rejects(
        asViewer.registerAgent({ name: 'a', endpoint: '127.0.0.1:9' }),
        PermissionDeniedError,
      );
      process.env.PODIUM_API_KEY = admin;
      const fromEnv = new PodiumClient(podium.address);
      try {
        await fromEnv.listAgents();
      } finally {
        fromEnv.close();
      }
    } finally {
      if (saved === undefined) delete process.env.PODIUM_API_KEY;
      else process.env.PODIUM_API_KEY = saved;
      anonymous.close();
      withKey.close();
      asViewer.close();
    }
  });
});
