import Hummingbird
import TallyStore

/// Every route of the System API (DESIGN §6, issue 6): the user's own routes, the API-key
/// routes (`/v1/models`, billing queries) and the admin routes.
func addSystemAPIRoutes(to router: Router<TallyRequestContext>, _ services: TallyServices) {
    let userAuth = UserAuthMiddleware(users: services.users)
    let adminAuth = UserAuthMiddleware(users: services.users, minimumRole: .admin)
    let models = ModelAvailability(channels: services.channels, prices: services.prices)
    TokenController(tokens: services.apiKeys, auth: userAuth).addRoutes(to: router)
    AccountController(accounts: services.accounts, balances: services.balances, groups: services.groups,
                      logs: services.logs, models: models, auth: userAuth).addRoutes(to: router)
    KeyController(authenticator: APIKeyAuthenticator(tokens: services.apiKeys), models: models).addRoutes(to: router)
    AdminController(accounts: services.accounts, tokens: services.apiKeys, balances: services.balances,
                    groups: services.groups, channels: services.channels, logs: services.logs,
                    auth: adminAuth).addRoutes(to: router)
}
