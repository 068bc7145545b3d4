// Evaluates one identity policy for a batch of AWS requests with @cloud-copilot/iam-simulate.
// stdin: {"policy": {...}, "account": "123456789012", "principal": "arn:...",
//         "requests": [{"action": "ec2:RunInstances", "resource": "arn:...", "context": {...}}]}
// stdout: one answer per request, in order:
//         {"result": "Allowed" | "ImplicitlyDenied" | "ExplicitlyDenied" | "Error",
//          "errors": "...", "ignoredContextKeys": [...]}
// Strict mode: a condition key missing from the request context is absent, as AWS treats it.
import { runSimulation } from '@cloud-copilot/iam-simulate'

async function readStdin() {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

async function evaluate({ policy, account, principal, requests }) {
  const answers = []
  for (const request of requests) {
    const simulation = {
      request: {
        principal,
        action: request.action,
        resource: { resource: request.resource, accountId: account },
        contextVariables: request.context
      },
      identityPolicies: [{ name: 'fedimg', policy }],
      serviceControlPolicies: [],
      resourceControlPolicies: []
    }
    const outcome = await runSimulation(simulation, { simulationMode: 'Strict' })
    if (outcome.resultType === 'error') {
      answers.push({ result: 'Error', errors: JSON.stringify(outcome.errors) })
    } else if (outcome.resultType === 'single') {
      answers.push({
        result: outcome.overallResult,
        ignoredContextKeys: outcome.result.ignoredContextKeys ?? []
      })
    } else {
      answers.push({ result: 'Error', errors: `wildcard resource ${request.resource}` })
    }
  }
  return answers
}

process.stdout.write(JSON.stringify(await evaluate(await readStdin())))
